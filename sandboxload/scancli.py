"""``sandboxload scan PATH...``: what each weight file is, and whether it loads safely.

safetensors files get the strict header check; pickle-based files are parsed in the sandbox
(nothing is built), so a file that names a global outside the allowlist is reported with that
global. Exit status: 0 every file loads safely, 1 at least one is refused, 2 a file could not
be read.
"""

from __future__ import annotations

import argparse
import json
import os

from . import formats, policy
from .errors import SandboxLoadError
from .pincli import weight_files


def classify(path: str) -> dict[str, str]:
    """{"file", "format", "verdict": ok|refused|error, "detail"} for one file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return {"file": path, "format": "-", "verdict": "error", "detail": exc.strerror or ""}
    try:
        size = os.fstat(fd).st_size
        with os.fdopen(os.dup(fd), "rb") as f:
            fmt = formats.sniff(f)
        try:
            detail = _check(fd, size, fmt, path)
            return {"file": path, "format": fmt, "verdict": "ok", "detail": detail}
        except SandboxLoadError as exc:
            return {
                "file": path,
                "format": fmt,
                "verdict": "refused",
                "detail": f"{type(exc).__name__}: {exc}",
            }
    finally:
        os.close(fd)


def _check(fd: int, size: int, fmt: str, path: str) -> str:
    from .errors import CorruptCheckpointError, TorchScriptRefusedError
    from .loader import SANDBOX_FORMATS

    if fmt == formats.SAFETENSORS:
        from .safetensors_mmap import read_header

        header = read_header(fd, path)
        return f"valid header, {len(header.tensors)} tensors"
    if fmt == formats.TORCHSCRIPT:
        raise TorchScriptRefusedError(path, fmt, "TorchScript archives carry code.")
    if fmt == formats.NUMPY:
        return "NumPy data (not loaded by torch.load)"
    if fmt not in SANDBOX_FORMATS:
        raise CorruptCheckpointError(path, f"a {fmt} file that is not a torch checkpoint")
    from .sandbox import client, session

    parsed = client.run(
        fd, size, SANDBOX_FORMATS[fmt], path, session.limits(policy.current(), size)
    )
    os.close(parsed.memfd)
    storages = parsed.description.get("storages") or []
    return f"pickle with only data: {len(storages)} storages (loads through the sandbox)"


def scan(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sandboxload scan", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per file")
    ap.add_argument("paths", nargs="+")
    opts = ap.parse_args(argv)
    results = [classify(p) for p in weight_files(opts.paths)]
    for r in results:
        if opts.json:
            print(json.dumps(r))
        else:
            print(f"{r['verdict'].upper():<8} {r['format']:<12} {r['file']}: {r['detail']}")
    verdicts = {r["verdict"] for r in results}
    return 2 if "error" in verdicts else 1 if "refused" in verdicts else 0
