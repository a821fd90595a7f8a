"""Where a load goes: (sniffed format, policy, what the caller asked) -> a route. Pure.

One function decides for every caller: the patched ``torch.load`` and safetensors entry
points, ``sandboxload.load``, ``scan``, ``doctor`` and ``convert``. It reads no file and
imports no library, so it can be enumerated exhaustively (``tests/test_routes.py``).
Hash pinning is not here: it needs the file's bytes, and the loader checks it after a route
that loads anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from . import formats
from .errors import (
    CorruptCheckpointError,
    FormatNotAllowedError,
    InvalidSafetensorsError,
    PickleRefusedError,
    SandboxLoadError,
    TorchScriptRefusedError,
    UnsupportedFormatError,
)
from .policy import Policy
from .sandbox.protocol import READ_DCP

# What the caller asked for.
ANY_WEIGHTS: Final = "any"  # torch.load, sandboxload.load, scan: whatever the file is
SAFETENSORS_ONLY: Final = "safetensors"  # safetensors' own entry points
DCP_METADATA: Final = "dcp-metadata"  # torch.distributed.checkpoint's .metadata pickle
ASKED: Final = (ANY_WEIGHTS, SAFETENSORS_ONLY, DCP_METADATA)

# Route names, as the audit log writes them.
SAFETENSORS: Final = "safetensors"  # header checked, then safetensors maps the file
SANDBOX: Final = "sandbox"  # parsed in the confined child
IN_PROCESS: Final = "in-process-pickle"  # pickle=allow: torch's own loader, by policy
REFUSED: Final = "none"  # nothing is parsed

REFUSE_HINT: Final = (
    "Convert it to safetensors, or set SANDBOXLOAD_PICKLE=sandbox to parse it in the "
    "confined child process (the default)."
)


@dataclass(frozen=True)
class Route:
    name: str  # one of the route names above
    reason: str  # for the audit line
    reader: str | None = None  # the sandbox reader (protocol.READERS), for SANDBOX
    error: Callable[[str], SandboxLoadError] | None = None  # file name -> error, for REFUSED

    @property
    def refused(self) -> bool:
        return self.name == REFUSED

    def refusal(self, file: str) -> SandboxLoadError:
        assert self.error is not None
        return self.error(file)


def _refuse(reason: str, error: Callable[[str], SandboxLoadError]) -> Route:
    return Route(REFUSED, reason, error=error)


def route(fmt: str, pol: Policy, asked: str = ANY_WEIGHTS) -> Route:
    """The route for a file whose bytes sniffed as ``fmt``."""
    if pol.formats and formats.POLICY_NAME.get(fmt) not in pol.formats:
        allowed, origin = pol.formats, pol.origins.get("formats", "default")
        return _refuse(
            "FormatNotAllowedError", lambda f: FormatNotAllowedError(f, fmt, allowed, origin)
        )
    if asked == SAFETENSORS_ONLY:
        if fmt == formats.SAFETENSORS:
            return Route(SAFETENSORS, "valid safetensors header")
        detail = f"its bytes are not a safetensors file (they sniff as {fmt})"
        return _refuse(detail, lambda f: InvalidSafetensorsError(f, detail))
    if asked == DCP_METADATA and fmt not in (formats.PICKLE, formats.UNKNOWN):
        # pickle.load would read nothing else; a weight file here is a confused folder.
        detail = f"not the pickle torch.distributed.checkpoint writes (the bytes sniff as {fmt})"
        return _refuse(detail, lambda f: CorruptCheckpointError(f, detail))
    if fmt == formats.SAFETENSORS:
        return Route(SAFETENSORS, "safetensors holds no code")
    if pol.pickle == "allow":
        origin = pol.origins.get("pickle", "default")
        return Route(IN_PROCESS, f"SANDBOXLOAD_PICKLE=allow ({origin})")
    if fmt == formats.TORCHSCRIPT:
        return _refuse(
            "TorchScript archive",
            lambda f: TorchScriptRefusedError(
                f,
                fmt,
                "TorchScript archives carry code; load them with torch.jit.load only if you "
                "trust the file, or export the weights to safetensors.",
            ),
        )
    if fmt == formats.NUMPY:
        return _refuse(
            "NumPy file passed to torch.load",
            lambda f: UnsupportedFormatError(
                f,
                fmt,
                "This is a NumPy file, not a torch checkpoint; read it with "
                "numpy.load(..., allow_pickle=False).",
            ),
        )
    if pol.pickle == "refuse":
        return _refuse(
            "SANDBOXLOAD_PICKLE=refuse", lambda f: PickleRefusedError(f, fmt, REFUSE_HINT)
        )
    reader = READ_DCP if asked == DCP_METADATA else formats.READER.get(fmt)
    if reader is None:
        return _refuse(
            "not a torch checkpoint",
            lambda f: CorruptCheckpointError(f, f"a {fmt} file that is not a torch checkpoint"),
        )
    return Route(SANDBOX, "parsed in the confined child", reader=reader)
