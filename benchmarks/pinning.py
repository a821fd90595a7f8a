"""Cost of hash pinning, as ratios against the same load without a manifest, in one run.

    python benchmarks/pinning.py [--runs N] [--json FILE]

A BERT-base-sized safetensors file (418 MB) is pinned; fresh interpreters (SANDBOXLOAD=1,
with and without SANDBOXLOAD_MANIFEST, alternately) each time the first load (which hashes
the whole file) and the median of warm reloads (the digest is kept per file identity).
Target: warm pinned reload <= 1.05x unpinned. The first, hashing load is reported as is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TIMED = """
import json, statistics, sys, time
import safetensors.torch
path, runs = sys.argv[1], int(sys.argv[2])
t = time.perf_counter(); safetensors.torch.load_file(path); first = time.perf_counter() - t
time.sleep(0.5)  # let start-up work finish (sandboxload's spare worker)
times = []
for _ in range(runs):
    t = time.perf_counter()
    safetensors.torch.load_file(path)
    times.append(time.perf_counter() - t)
print(json.dumps([first, statistics.median(times)]))
"""


def run(path: Path, runs: int, manifest: Path | None) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXLOAD")}
    env["SANDBOXLOAD"] = "1"
    if manifest is not None:
        env["SANDBOXLOAD_MANIFEST"] = str(manifest)
    proc = subprocess.run(
        [sys.executable, "-c", TIMED, str(path), str(runs)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    first, warm = json.loads(proc.stdout.strip().splitlines()[-1])
    return first, warm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    opts = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import safetensors.torch
    from sandbox_load import bert_base_state_dict

    from sandboxload import pinning

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bert.safetensors"
        safetensors.torch.save_file(bert_base_state_dict(), str(path))
        manifest = Path(d) / "SHA256SUMS"
        pinning.write_manifest([str(path)], str(manifest))
        plain, pinned = [], []
        for _ in range(opts.rounds):
            plain.append(run(path, opts.runs, None))
            pinned.append(run(path, opts.runs, manifest))
    p_first = statistics.median(x[0] for x in plain)
    p_warm = statistics.median(x[1] for x in plain)
    g_first = statistics.median(x[0] for x in pinned)
    g_warm = statistics.median(x[1] for x in pinned)
    result = {
        "file_mb": 418,
        "first_load_ms": {"unpinned": round(p_first * 1000, 1), "pinned": round(g_first * 1000, 1)},
        "warm_reload_ms": {"unpinned": round(p_warm * 1000, 2), "pinned": round(g_warm * 1000, 2)},
        "warm_ratio": round(g_warm / p_warm, 3),
    }
    print(
        f"first load (hashes 418 MB when pinned): unpinned {result['first_load_ms']['unpinned']}"
        f" ms, pinned {result['first_load_ms']['pinned']} ms"
    )
    print(
        f"warm reload: unpinned {result['warm_reload_ms']['unpinned']} ms, pinned "
        f"{result['warm_reload_ms']['pinned']} ms, ratio {result['warm_ratio']} (target <= 1.05)"
    )
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
