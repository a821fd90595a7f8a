"""What the numbers were measured on: machine, versions, and the sandboxload tree."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "safetensors", "transformers", "sentence-transformers", "infinity-emb")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def sandboxload_tree() -> str:
    """The commit measured, and whether sandboxload/ had uncommitted changes."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", "sandboxload")
    return f"{commit} + uncommitted changes in sandboxload/" if dirty else commit


def source_digest() -> str:
    """A digest of sandboxload's source as it is now (an editable install measures whatever
    is on disk): compared at the start and the end of a run."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "sandboxload").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def infinity_versions(python: Path) -> dict[str, str]:
    """transformers and sentence-transformers of the venv infinity runs in."""
    code = (
        "import json; from importlib import metadata as m; print(json.dumps({n: m.version(n) "
        "for n in ('transformers', 'sentence-transformers', 'infinity-emb')}))"
    )
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    import json

    versions: dict[str, str] = json.loads(proc.stdout)
    return versions


def collect() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "kernel": platform.release(),
        "shmem_thp": _read("/sys/kernel/mm/transparent_hugepage/shmem_enabled").strip(),
        "python": sys.version.split()[0],
        "versions": _versions(),
        "sandboxload": sandboxload_tree(),
        "source_digest": source_digest(),
        "loadavg_start": load_average(),
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine skews every number."""
    return [round(x, 2) for x in os.getloadavg()]
