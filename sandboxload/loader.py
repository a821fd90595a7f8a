"""The one place a load is decided: format -> policy -> route -> audit.

Every patch adapts its library's signature and calls into here; nothing else decides whether
bytes get parsed, and how.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from . import audit, formats, pinning, policy
from .errors import (
    CorruptCheckpointError,
    FormatNotAllowedError,
    HashMismatchError,
    InvalidSafetensorsError,
    PickleRefusedError,
    TorchScriptRefusedError,
    UnpinnedFileError,
    UnsupportedFormatError,
)

REFUSE_HINT = (
    "Convert it to safetensors, or set SANDBOXLOAD_PICKLE=sandbox to parse it in the "
    "confined child process (the default)."
)
# What the sandbox parses: every pickle-based torch form (a raw pickle or unknown bytes is
# treated as a legacy stream, as torch.load would, and fails its magic-number check safely).
SANDBOX_FORMATS = {
    formats.TORCH_ZIP: "torch-zip",
    formats.TORCH_LEGACY: "torch-legacy",
    formats.PICKLE: "torch-legacy",
    formats.UNKNOWN: "torch-legacy",
    formats.TORCH_TAR: "torch-tar",
}


@dataclass
class Source:
    """An opened weight file: ``file`` is seekable and positioned where the data starts."""

    name: str
    file: IO[bytes]
    fd: int | None  # set when sandboxload opened the path itself
    size: int

    @property
    def fileno(self) -> int:
        assert self.fd is not None
        return self.fd


@dataclass
class Decision:
    """Writes the audit line of one load: what, by which API, which route, how long."""

    pol: policy.Policy
    api: str
    file: str
    fmt: str
    size: int
    start: float
    sha256: str | None = None

    def __call__(self, decision: str, route: str, reason: str) -> None:
        audit.record(
            self.pol.audit_log,
            api=self.api,
            file=self.file,
            format=self.fmt,
            sha256=self.sha256,
            decision=decision,
            route=route,
            reason=reason,
            bytes=self.size,
            ms=round((time.perf_counter() - self.start) * 1000, 3),
        )


# Sniffed format -> its name in SANDBOXLOAD_FORMATS (every pickle stream torch would read as
# a legacy checkpoint counts as torch-legacy).
ALLOWLIST_NAMES = {
    formats.SAFETENSORS: "safetensors",
    formats.TORCH_ZIP: "torch-zip",
    formats.TORCH_LEGACY: "torch-legacy",
    formats.TORCH_TAR: "torch-legacy",
    formats.PICKLE: "torch-legacy",
    formats.UNKNOWN: "torch-legacy",
    formats.NUMPY: "numpy",
}


def admit(
    pol: policy.Policy, decide: Decision, fd: int | None, fmt: str, data: bytes | None = None
) -> None:
    """The policy gates every file passes before any parser sees it: the format allowlist,
    then hash pinning (digest from this very descriptor)."""
    try:
        if pol.formats and ALLOWLIST_NAMES.get(fmt, fmt) not in pol.formats:
            raise FormatNotAllowedError(decide.file, fmt, pol.formats)
        decide.sha256 = pinning.check(fd, decide.file, data, pol.manifest)
    except (FormatNotAllowedError, HashMismatchError, UnpinnedFileError) as exc:
        decide("refused", "none", type(exc).__name__)
        raise


def _describe(f: Any) -> str:
    name = getattr(f, "name", None)
    return name if isinstance(name, str) else f"<{type(f).__name__}>"


@contextmanager
def open_source(f: Any) -> Iterator[Source]:
    """Open a path, or adopt a file object (made seekable), for sniffing and loading."""
    if isinstance(f, (str, bytes, os.PathLike)):
        path = os.fsdecode(os.fspath(f))
        with open(path, "rb") as fh:
            yield Source(path, fh, fh.fileno(), os.fstat(fh.fileno()).st_size)
        return
    if not hasattr(f, "read"):
        raise TypeError(
            f"expected a path (str, bytes, os.PathLike) or a binary file object, "
            f"got {type(f).__name__}"
        )
    fh: IO[bytes] = f
    if not (hasattr(f, "seekable") and f.seekable()):
        fh = io.BytesIO(f.read())
    pos = fh.tell()
    size = fh.seek(0, os.SEEK_END) - pos
    fh.seek(pos)
    yield Source(_describe(f), fh, None, size)


def torch_load(
    original: Callable[..., Any],
    f: Any,
    *,
    map_location: Any,
    pickle_module: Any,
    weights_only: bool | None,
    mmap: bool | None,
    pickle_load_args: dict[str, Any],
    api: str,
) -> Any:
    """What the patched ``torch.load`` does, for every caller and every argument."""
    start = time.perf_counter()
    pol = policy.current()
    with open_source(f) as src:
        fmt = formats.sniff(src.file)

        log = Decision(pol, api, src.name, fmt, src.size, start)
        admit(pol, log, src.fd, fmt, _stream_bytes(src) if pol.manifest else None)
        if fmt == formats.SAFETENSORS:
            result = _safetensors_state_dict(src, map_location)
            log("loaded", "safetensors", "safetensors holds no code")
            return result
        if pol.pickle == "allow":
            # Opt-in migration mode: the caller's own arguments, the original loader; a path
            # goes as /proc/self/fd/N, the very inode that was sniffed (and pinned).
            target = src.file if src.fd is None else f"/proc/self/fd/{src.fd}"
            result = original(
                target,
                map_location,
                pickle_module,
                weights_only=weights_only,
                mmap=mmap,
                **pickle_load_args,
            )
            log(
                "allowed",
                "in-process-pickle",
                f"SANDBOXLOAD_PICKLE=allow ({pol.origins.get('pickle')})",
            )
            return result
        if fmt == formats.TORCHSCRIPT:
            log("refused", "none", "TorchScript archive")
            raise TorchScriptRefusedError(
                src.name,
                fmt,
                "TorchScript archives carry code; load them with torch.jit.load only if you "
                "trust the file, or export the weights to safetensors.",
            )
        if fmt == formats.NUMPY:
            log("refused", "none", "NumPy file passed to torch.load")
            raise UnsupportedFormatError(
                src.name,
                fmt,
                "This is a NumPy file, not a torch checkpoint; read it with "
                "numpy.load(..., allow_pickle=False).",
            )
        if pol.pickle == "refuse":
            log("refused", "none", "SANDBOXLOAD_PICKLE=refuse")
            raise PickleRefusedError(src.name, fmt, REFUSE_HINT)
        if fmt not in SANDBOX_FORMATS:
            log("refused", "none", "not a torch checkpoint")
            raise CorruptCheckpointError(src.name, f"a {fmt} file that is not a torch checkpoint")
        try:
            result = _sandboxed(src, fmt, pol, map_location)
        except Exception as exc:
            log("refused", "sandbox", f"{type(exc).__name__}: {exc}")
            raise
        log("loaded", "sandbox", "parsed in the confined child")
        return result


def _sandboxed(src: Source, fmt: str, pol: policy.Policy, map_location: Any) -> Any:
    from .sandbox import session

    if src.fd is not None:
        return session.load(src.fd, src.size, SANDBOX_FORMATS[fmt], src.name, pol, map_location)
    fd = session.memfd_from_bytes(src.file.read())
    try:
        return session.load(fd, src.size, SANDBOX_FORMATS[fmt], src.name, pol, map_location)
    finally:
        os.close(fd)


def _stream_bytes(src: Source) -> bytes | None:
    """The rest of an in-memory stream (to hash it), leaving its position unchanged."""
    if src.fd is not None:
        return None
    pos = src.file.tell()
    data = src.file.read()
    src.file.seek(pos)
    return data


def _safetensors_state_dict(src: Source, map_location: Any) -> dict[str, Any]:
    """A safetensors file that reached torch.load: validated, then loaded by safetensors."""
    from .maplocation import relocate
    from .patches.safetensors import original_load_bytes, original_safe_open
    from .safetensors_mmap import parse_header, read_header

    if src.fd is not None:
        read_header(src.fd, src.name)
        with original_safe_open()(f"/proc/self/fd/{src.fd}", framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    else:
        data = src.file.read()
        parse_header(data, len(data), src.name)
        tensors = original_load_bytes()(data)
    return relocate(tensors, map_location)


def safetensors_open(
    original: Callable[..., Any],
    filename: Any,
    framework: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    api: str,
) -> Any:
    """``safe_open``: only a file whose bytes are a valid safetensors file is opened."""
    from .safetensors_mmap import read_header

    start = time.perf_counter()
    pol = policy.current()
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return original(filename, framework, *args, **kwargs)  # let safetensors reject it
    with open_source(filename) as src:
        fmt = formats.sniff(src.file)

        decide = Decision(pol, api, src.name, fmt, src.size, start)
        admit(pol, decide, src.fd, fmt)
        try:
            if fmt != formats.SAFETENSORS:
                raise InvalidSafetensorsError(src.name, f"its bytes are a {fmt} file")
            read_header(src.fileno, src.name)
        except InvalidSafetensorsError as exc:
            decide("refused", "safetensors", exc.detail)
            raise
        # Same inode, reopened by safetensors, which maps it privately: zero copy.
        result = original(f"/proc/self/fd/{src.fileno}", framework, *args, **kwargs)
        decide("loaded", "safetensors", "valid safetensors header")
        return result


def safetensors_bytes(original: Callable[..., Any], data: bytes, api: str) -> Any:
    """``safetensors.torch.load(bytes)``: the header is validated first."""
    from .safetensors_mmap import parse_header

    start = time.perf_counter()
    pol = policy.current()
    decide = Decision(pol, api, "<bytes>", "safetensors", len(data), start)
    admit(pol, decide, None, formats.SAFETENSORS, bytes(data) if pol.manifest else None)
    try:
        parse_header(bytes(data[: 8 + 100 * 1024 * 1024]), len(data), "<bytes>")
    except InvalidSafetensorsError as exc:
        decide("refused", "safetensors", exc.detail)
        raise
    result = original(data)
    decide("loaded", "safetensors", "valid safetensors header")
    return result
