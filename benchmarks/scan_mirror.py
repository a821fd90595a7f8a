"""Throughput of ``sandboxload scan`` over a model mirror, against picklescan.

Builds a mirror in a temporary directory: ``--small`` checkpoints of a few KB to 1 MB
(``torch.save``'d state dicts as torch zips, and safetensors, half each) and ``--large`` of
~100 MB, then times, on the same mirror (page cache warm: each run once before timing):

- ``sandboxload scan --jobs 1`` and ``--jobs 2`` (every pickle parsed in a sandbox child);
- ``picklescan --path`` (static opcode scan in-process; it does not read safetensors). It is
  not a dependency of sandboxload: ``.venv/bin/python -m pip install picklescan``; skipped if
  missing.

Prints files/s and MB/s for each. Run: ``.venv/bin/python benchmarks/scan_mirror.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1_000_000


def build(root: Path, small: int, large: int, seed: int = 0) -> tuple[int, int]:
    """Write the mirror; (files, bytes)."""
    import safetensors.torch
    import torch

    rng = random.Random(seed)
    files = total = 0
    for i in range(small + large):
        model = root / f"org{i % 50:02d}" / f"model{i:04d}"
        model.mkdir(parents=True)
        if i < small:
            nbytes = int(10 ** rng.uniform(3.5, 6))  # ~3 KB .. 1 MB, log-uniform
            tensors = rng.randint(1, 8)
        else:
            nbytes, tensors = 100 * MB, 40
        per = max(1, nbytes // 4 // tensors)
        sd = {f"layer{t}.weight": torch.randn(per) for t in range(tensors)}
        if i % 2:
            path = model / "model.safetensors"
            safetensors.torch.save_file(sd, str(path))
        else:
            path = model / "pytorch_model.bin"
            torch.save(sd, path)
        files += 1
        total += path.stat().st_size
    return files, total


def timed(argv: list[str]) -> tuple[float, int, str]:
    """Wall seconds of one run (after a warm-up run), its exit status and last output line."""
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return seconds, proc.returncode, lines[-1] if lines else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=20)
    ap.add_argument("--keep", help="build the mirror here and keep it (default: a temp dir)")
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="scan-mirror-") as tmp:
        root = Path(opts.keep or tmp) / "mirror"
        t0 = time.perf_counter()
        files, size = build(root, opts.small, opts.large)
        built = time.perf_counter() - t0
        print(f"mirror: {files} files, {size / MB:.0f} MB, built in {built:.0f} s")
        py = sys.executable
        scan = [py, "-m", "sandboxload", "scan"]
        runs = {
            f"sandboxload scan --jobs {j}": [*scan, "--jobs", str(j), str(root)] for j in (1, 2)
        }
        if importlib.util.find_spec("picklescan") is not None:
            runs["picklescan --path"] = [py, "-m", "picklescan", "--path", str(root)]
        else:
            print("picklescan: not installed (.venv/bin/python -m pip install picklescan); skipped")
        print(f"{'tool':<28} {'seconds':>8} {'files/s':>9} {'MB/s':>8}  exit")
        for name, argv in runs.items():
            seconds, status, last = timed(argv)
            print(
                f"{name:<28} {seconds:>8.2f} {files / seconds:>9.1f} "
                f"{size / MB / seconds:>8.1f}  {status}  {last[:70]}"
            )
    return 0


if __name__ == "__main__":
    os.environ.pop("SANDBOXLOAD", None)  # the scan itself, not a wrapped interpreter
    sys.exit(main())
