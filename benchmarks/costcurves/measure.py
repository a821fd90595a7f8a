"""Running probes in fresh interpreters, and the medians of what they report."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

PROBE = Path(__file__).with_name("probe.py")
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


class ProbeError(RuntimeError):
    """A probe exited with an error; the message ends with its last stderr line."""


def child_env(active: bool = False, spare: bool = True) -> dict[str, str]:
    """This environment without any sandboxload setting, quiet and offline; bytecode on (as
    deployed; ``PYTHONDONTWRITEBYTECODE`` would recompile sandboxload at every start).
    ``active`` activates sandboxload through ``SANDBOXLOAD=1``; ``spare=False`` turns its
    spare worker off (the first load then starts a worker itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXLOAD")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(QUIET_ENV)
    if active:
        env["SANDBOXLOAD"] = "1"
    if not spare:
        env["SANDBOXLOAD_SPARE"] = "off"
    return env


def run_probe(args: list[str], env: dict[str, str], timeout: float = 1800) -> Any:
    """Run ``probe.py ARGS`` in a fresh interpreter; its JSON answer."""
    proc = subprocess.run(
        [sys.executable, str(PROBE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        # The exception and the frame that raised it.
        tail = proc.stderr.strip().splitlines()[-3:] or [f"exit status {proc.returncode}"]
        where = " | ".join(line.strip() for line in tail)
        raise ProbeError(f"probe {' '.join(args[:2])} failed: {where[-500:]}")
    return json.loads(lines[-1])


def warm(kind: str, path: Path, runs: int) -> dict[str, list[float]]:
    """Interleaved warm loads of every route of ``kind``: samples in ms per route."""
    samples: dict[str, list[float]] = run_probe(["warm", kind, str(path), str(runs)], child_env())
    return samples


def cold(route: str, path: Path) -> dict[str, Any]:
    """One first load of ``route`` in a fresh interpreter (sandboxload's spare off)."""
    result: dict[str, Any] = run_probe(["cold", route, str(path)], child_env(spare=False))
    return result


def sentence_transformer(folder: Path, active: bool) -> dict[str, Any]:
    result: dict[str, Any] = run_probe(["st", str(folder)], child_env(active=active))
    if result["active"] != active:
        raise ProbeError(f"sandboxload active: {result['active']}, expected {active}")
    return result


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each numeric field over ``runs``, and the runs themselves."""
    fields = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    fields = [k for k in fields if not isinstance(runs[0][k], bool)]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in fields}
    out["runs"] = runs
    return out
