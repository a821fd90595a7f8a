"""The one place a load happens: open, sniff, route, pin, audit -- then the route's loader.

Every patch adapts its library's signature and calls one of the three entry points here
(:func:`torch_load`, :func:`safetensors_open`, :func:`safetensors_bytes`); each goes through
the same prologue, :func:`admit`, which decides with :func:`routes.route` and refuses (with an
audit line) before any parser sees a byte.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import IO, Any

from . import audit, formats, modelfolder, origins, pinning, policy, routes
from .errors import (
    HashMismatchError,
    InvalidSafetensorsError,
    UnpinnedFileError,
)
from .fileid import FileId, identity, open_regular
from .patches import registry

UNKNOWN = "<bytes>"  # the name of in-memory weights no file can be named for
# The one bytes object admitted by the gate in force on this thread: safetensors' own
# torch.load(bytes) calls deserialize, which must not gate (and audit) the same bytes again.
_admitted: ContextVar[object] = ContextVar("sandboxload_admitted", default=None)
# The file a library is reading records from while it hands them over as in-memory streams
# (torch.distributed.checkpoint's BytesIO slices of a .distcp file): named in errors and
# the audit line, never used for pinning (the pin is the whole file's, not a slice's).
reading_from: ContextVar[str | None] = ContextVar("sandboxload_reading_from", default=None)
# Set, to that file's path, while a library reads records from a snapshot of a whole file
# that was checked against the manifest: bytes of no file of their own read meanwhile are
# those records, already pinned as part of it.
reading_pinned: ContextVar[str | None] = ContextVar("sandboxload_reading_pinned", default=None)


@dataclass
class Source:
    """An opened weight file: ``file`` is seekable and positioned where the data starts."""

    name: str  # what the audit line and errors call it: the path, or "<bytes>" if unknown
    file: IO[bytes]
    fd: int | None  # set when sandboxload opened the path itself
    size: int
    # A file object's bytes, read once: what is sniffed, hashed and loaded is one snapshot.
    data: bytes | None = None
    # The file whose pin applies (None: bytes that cannot be traced to a file).
    origin: str | None = None


@dataclass
class AuditLine:
    """The audit line of one load: what, by which API, which route, how long."""

    pol: policy.Policy
    api: str
    file: str
    fmt: str
    size: int
    enabled: bool = True  # scan classifies files without loading them: no audit line
    start: float = field(default_factory=time.perf_counter)
    sha256: str | None = None

    def write(self, decision: str, route: str, reason: str) -> None:
        if not self.enabled:
            return
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


@dataclass
class Admitted:
    """A file that passed every gate, and the route it takes."""

    src: Source
    fmt: str
    pol: policy.Policy
    route: routes.Route
    log: AuditLine
    file_id: FileId | None = None  # the file's identity when it was sniffed and pinned


@contextmanager
def open_source(f: Any) -> Iterator[Source]:
    """Open a path, or read a file object once (from its position), for sniffing and
    loading."""
    if isinstance(f, (str, bytes, os.PathLike)):
        path = os.fsdecode(os.fspath(f))
        with path_source(path, path) as src:
            yield src
        return
    if not hasattr(f, "read"):
        raise TypeError(
            f"expected a path (str, bytes, os.PathLike) or a binary file object, "
            f"got {type(f).__name__}"
        )
    origin = origins.of_file(f)  # before reading: a pipe's end may not outlive the read
    label, within = f"<{type(f).__name__}>", reading_from.get()
    if within is not None:
        label = f"{label} read from {within}"
    yield memory_source(bytes(f.read()), origin, label)


@contextmanager
def path_source(path: str, origin: str | None) -> Iterator[Source]:
    """``path`` opened (never blocking, regular files only); its pin is ``origin``'s."""
    with os.fdopen(open_regular(path), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        yield Source(origin or "<file object>", fh, fh.fileno(), size, origin=origin)


def memory_source(data: bytes, origin: str | None, label: str = UNKNOWN) -> Source:
    """In-memory bytes (read from ``origin``, when that is known) as a source; ``label``
    names them when their file is unknown."""
    return Source(origin or label, io.BytesIO(data), None, len(data), data, origin)


def decide(src: Source, pol: policy.Policy, api: str, asked: str, audit: bool = True) -> Admitted:
    """Sniff the opened file and route it; nothing is parsed yet."""
    fmt = formats.sniff(src.file)
    log = AuditLine(pol, api, src.name, fmt, src.size, enabled=audit)
    file_id = identity(src.fd) if src.fd is not None else None
    return Admitted(src, fmt, pol, routes.route(fmt, pol, asked), log, file_id)


def pin(a: Admitted) -> None:
    """Hash pinning, from the descriptor (or bytes) that will be loaded."""
    if a.src.origin is None and a.src.data is not None and reading_pinned.get() is not None:
        return  # a record of a file pinned (and snapshotted) as a whole
    try:
        src = a.src
        a.log.sha256 = pinning.check(src.origin, src.fd, src.data, a.pol.manifest, src.name)
    except (HashMismatchError, UnpinnedFileError) as exc:
        a.log.write("refused", routes.REFUSED, type(exc).__name__)
        raise


@contextmanager
def admit(f: Any, api: str, asked: str = routes.ANY_WEIGHTS) -> Iterator[Admitted]:
    """The prologue of every load: open, sniff, route (refusals end here), pin. ``f`` is a
    path, a file object, or a :class:`Source` already made."""
    pol = policy.current()
    with nullcontext(f) if isinstance(f, Source) else open_source(f) as src:
        a = decide(src, pol, api, asked)
        modelfolder.check_inside(src.origin)
        if a.route.refused:
            a.log.write("refused", a.route.name, a.route.reason)
            raise a.route.refusal(src.name)
        pin(a)
        yield a


def torch_load(
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
    asked, device = routes.ANY_WEIGHTS, None
    if isinstance(f, (str, os.PathLike)) and os.fspath(f).endswith(".safetensors"):
        # torch delegates such a path to safetensors.torch.load_file: the same device
        # handling and errors, and never an unpickling of what it holds.
        device, asked = _safetensors_device(map_location), routes.SAFETENSORS_ONLY
    with admit(f, api, asked) as a:
        route, src = a.route, a.src
        try:
            if route.name == routes.SAFETENSORS:
                result = _safetensors_state_dict(src, map_location, device)
            elif route.name == routes.IN_PROCESS:
                # Opt-in migration mode: the caller's own arguments, the original loader; a
                # path goes as /proc/self/fd/N, the very inode that was sniffed (and pinned).
                target = src.file if src.fd is None else f"/proc/self/fd/{src.fd}"
                result = registry.original(registry.TORCH_LOAD)(
                    target,
                    map_location,
                    pickle_module,
                    weights_only=weights_only,
                    mmap=mmap,
                    **pickle_load_args,
                )
            else:
                result = sandboxed(a, map_location, mmap)
        except Exception as exc:
            a.log.write("refused", route.name, f"{type(exc).__name__}: {exc}")
            raise
        a.log.write(
            "allowed" if route.name == routes.IN_PROCESS else "loaded", route.name, route.reason
        )
        return result


def dcp_metadata(f: Any, api: str, original: Callable[[Any], Any]) -> Any:
    """A ``torch.distributed.checkpoint`` ``.metadata`` stream that the library would
    ``pickle.load``: parsed in the sandbox into that module's own records (or, under
    ``pickle=allow``, ``original`` on the very bytes that were sniffed and pinned)."""
    with admit(f, api, routes.DCP_METADATA) as a:
        try:
            if a.route.name == routes.IN_PROCESS:
                a.src.file.seek(0)
                result = original(a.src.file)
            else:
                result = sandboxed(a, None, None)
        except Exception as exc:
            a.log.write("refused", a.route.name, f"{type(exc).__name__}: {exc}")
            raise
        decision = "allowed" if a.route.name == routes.IN_PROCESS else "loaded"
        a.log.write(decision, a.route.name, a.route.reason)
        return result


def sandboxed(a: Admitted, map_location: Any, mmap: bool | None) -> Any:
    """The sandbox route. Tensors own their memory, as torch.load's do: a file is read into
    memory of this process while the child parses it (in-memory bytes go to the child as a
    sealed memfd) -- unless the caller asked for a mapping (``mmap=True``, as torch maps) or
    for no data at all (``map_location="meta"``), when the file itself is mapped."""
    from .sandbox import memfds
    from .sandbox.client import setup_errors
    from .sandbox.load import load

    src, reader = a.src, a.route.reader
    assert reader is not None
    if src.fd is not None:
        if mmap or _is_meta(map_location):
            return load(src.fd, src.size, reader, src.name, a.pol, map_location, file_id=a.file_id)
        if a.log.sha256 is not None:  # pinned: load exactly the bytes hashed, from a snapshot
            with setup_errors(src.name):
                snap = memfds.pinned_snapshot(src.fd, src.size, src.name, a.log.sha256)
            try:
                return load(snap, src.size, reader, src.name, a.pol, map_location)
            finally:
                os.close(snap)
        fd = src.fd
        return load(
            fd,
            src.size,
            reader,
            src.name,
            a.pol,
            map_location,
            file_id=a.file_id,
            unchanged=lambda: identity(fd) == a.file_id,  # written since the pin: refused
        )
    assert src.data is not None
    with setup_errors(src.name):
        fd = memfds.from_bytes(src.data)
    try:
        return load(fd, src.size, reader, src.name, a.pol, map_location)
    finally:
        os.close(fd)


def _is_meta(map_location: Any) -> bool:
    return str(map_location) == "meta"


def _safetensors_device(map_location: Any) -> str:
    """The device torch passes to ``load_file`` for a ``.safetensors`` path (torch 2.13)."""
    import torch

    if map_location is None:
        return "cpu"
    if isinstance(map_location, (str, bytes, torch.device)):
        return str(map_location)
    kind = "dict" if isinstance(map_location, dict) else "callable"
    raise RuntimeError(
        f"Loading safetensors file with {kind} map_location is not supported. "
        "Use a device string or torch.device instead."
    )


def _safetensors_state_dict(src: Source, map_location: Any, device: str | None) -> Any:
    """A safetensors file that reached torch.load: validated, then loaded by safetensors --
    for a ``.safetensors`` path exactly as torch's delegation to ``load_file`` would
    (``device``: file order, safetensors' own errors), otherwise relocated like a pickle."""
    from .maplocation import relocate
    from .safetensors_header import parse_header, read_header

    if src.fd is not None:
        read_header(src.fd, src.name)
        safe_open = registry.original(registry.SAFE_OPEN)
        with safe_open(f"/proc/self/fd/{src.fd}", framework="pt", device=device or "cpu") as f:
            tensors = f.get_tensors()  # in file order, as load_file returns them
        if device is not None:
            return tensors
    else:
        assert src.data is not None
        parse_header(src.data, len(src.data), src.name)
        token = _admitted.set(src.data)  # admitted here: its inner deserialize passes
        try:
            tensors = registry.original(registry.SAFETENSORS_LOAD_BYTES)(src.data)
        finally:
            _admitted.reset(token)
    return relocate(tensors, map_location)


def safetensors_open(
    filename: Any, framework: str, args: tuple[Any, ...], kwargs: dict[str, Any], api: str
) -> Any:
    """``safe_open``: only a file whose bytes are a valid safetensors file is opened."""
    if not isinstance(filename, (str, bytes, os.PathLike)):
        original = registry.original(registry.SAFE_OPEN)
        return original(filename, framework, *args, **kwargs)  # let safetensors reject it
    path = os.fsdecode(os.fspath(filename))
    return _open_gated(path, path, framework, args, kwargs, api)


def _open_gated(
    path: str,
    origin: str | None,
    framework: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    api: str,
) -> Any:
    from .safetensors_header import read_header

    with path_source(path, origin) as src, admit(src, api, routes.SAFETENSORS_ONLY) as a:
        assert a.src.fd is not None
        try:
            read_header(a.src.fd, a.src.name)
        except InvalidSafetensorsError as exc:
            a.log.write("refused", a.route.name, exc.detail)
            raise
        # Same inode, reopened by safetensors, which maps it privately: zero copy.
        original = registry.original(registry.SAFE_OPEN)
        result = original(f"/proc/self/fd/{a.src.fd}", framework, *args, **kwargs)
        a.log.write("loaded", a.route.name, a.route.reason)
        return result


def safetensors_bytes(data: Any, api: str, parse: Callable[[Any], Any]) -> Any:
    """``safetensors.torch.load(bytes)`` and ``deserialize(bytes)``: pinned against the file
    the bytes were read from (when a tracked library read them), header validated first."""
    from .safetensors_header import parse_header

    if data is _admitted.get():  # the inner deserialize of a load already admitted
        return parse(data)
    if not isinstance(data, bytes):
        return parse(data)  # safetensors takes bytes only: its own TypeError for the rest
    src = memory_source(data, origins.of_bytes(data))
    with admit(src, api, routes.SAFETENSORS_ONLY) as a:
        assert a.src.data is not None  # the one copy that is sniffed, hashed and loaded
        try:
            parse_header(a.src.data, len(a.src.data), a.src.name)
        except InvalidSafetensorsError as exc:
            a.log.write("refused", a.route.name, exc.detail)
            raise
        token = _admitted.set(a.src.data)
        try:
            result = parse(a.src.data)
        finally:
            _admitted.reset(token)
        a.log.write("loaded", a.route.name, a.route.reason)
        return result


def safetensors_handle(
    handle: Any, framework: str, args: tuple[Any, ...], kwargs: dict[str, Any], api: str
) -> Any:
    """``_safe_open_handle(file object)``: safetensors itself reopens the file by the
    object's ``name``, whatever the descriptor is open on; sandboxload opens the file the
    descriptor is open on, through the ``safe_open`` gate, and never resolves the name."""
    fd = origins.regular_fd(handle)
    if fd is None:
        raise TypeError(
            f"{api} needs a binary file object open on a regular file; got "
            f"{type(handle).__name__}. Load a path with safe_open, bytes with "
            "safetensors.torch.load."
        )
    origin = origins.of_file(handle)
    return _open_gated(f"/proc/self/fd/{fd}", origin, framework, args, kwargs, api)
