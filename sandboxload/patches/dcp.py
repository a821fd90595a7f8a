"""``torch.distributed.checkpoint``: the ``.metadata`` file it reads with plain ``pickle``.

``FileSystemReader.read_metadata`` (reached by ``dcp.load``, ``dcp_to_torch_save``, and
Trainer / accelerate resume from FSDP checkpoints) calls ``pickle.load`` on the checkpoint's
``.metadata``: a payload there would run in this process. The module's own ``pickle`` name is
pointed at a stand-in whose ``load`` parses the stream in the sandbox into the module's fixed
set of records (:mod:`sandbox.rebuild_dcp`); ``dump`` and the rest are pickle's own, so the
writer is untouched and torch's reader code runs unchanged around the call. The tensor and
byte records of the checkpoint go through the patched ``torch.load`` already.

dcp runs its steps inside wrappers that turn any error into a ``CheckpointException``; the
user-facing calls are entry points, so a refusal reaches the caller as itself.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import IO, Any

from .. import dcpfolder, loader, origins, pinning, policy
from ..errors import SandboxLoadError
from ..fileid import open_regular
from ..modelfolder import is_dcp_metadata
from ..refusals import refuse
from ..sandbox import memfds
from ._common import entry_point, wrap, wrap_method

API = "torch.distributed.checkpoint"


class GuardedPickle:
    """What ``torch.distributed.checkpoint.filesystem`` sees as ``pickle``."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def load(self, file: IO[bytes], **kwargs: Any) -> Any:
        name = origins.of_file(file) or "<.metadata>"
        try:
            meta = loader.dcp_metadata(file, API, lambda f: self._real.load(f, **kwargs))
            dcpfolder.check_metadata(meta, name)
        except SandboxLoadError as exc:
            refuse(exc)  # recorded: dcp's wrappers turn it into a CheckpointException
        return meta

    def loads(self, data: bytes, **kwargs: Any) -> Any:
        return self.load(io.BytesIO(data), **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("Unpickler", "_Unpickler", "_loads", "_load"):  # no unguarded way to read
            raise AttributeError(f"{API} reads pickles through sandboxload only")
        return getattr(self._real, name)


def _opened_safely(original: Callable[..., Any]) -> Callable[..., Any]:
    @contextmanager
    def create_stream(self: Any, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
        if mode != "rb":
            with original(self, path, mode) as stream:
                yield stream
            return
        # torch opens with a plain open(), before any gate: a FIFO named .metadata (or a
        # data file) would block it for ever. Regular files only, never blocking.
        name = os.fspath(path)
        try:
            fd = open_regular(name)
            try:
                dcpfolder.check_opened(fd, name)
                pinned = None if is_dcp_metadata(name) else _pinned_snapshot(fd, name)
            except BaseException:
                os.close(fd)
                raise
        except SandboxLoadError as exc:
            refuse(exc)
        if pinned is not None:
            os.close(fd)
            fd = pinned
        named = loader.reading_from.set(name)  # names the records read from it
        whole = loader.reading_pinned.set(name if pinned is not None else None)
        try:
            with os.fdopen(fd, "rb") as stream:
                yield stream
        finally:
            loader.reading_pinned.reset(whole)
            loader.reading_from.reset(named)

    return create_stream


def _pinned_snapshot(fd: int, name: str) -> int | None:
    """Under a manifest, a data file is pinned as a whole (its records are read as bytes of
    no file of their own): checked, then read from a sealed copy of exactly those bytes."""
    manifest = policy.current().manifest
    if manifest is None:
        return None
    digest = pinning.check(name, fd, None, manifest, name)
    assert digest is not None
    return memfds.pinned_snapshot(fd, os.fstat(fd).st_size, name, digest)


def _in_folder(original: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        with dcpfolder.reading(getattr(self, "path", None)):
            return original(self, *args, **kwargs)

    return method


def patch_filesystem(module: ModuleType) -> None:
    """Idempotent: the module's ``pickle`` becomes the guarded one, its local ``FileSystem``
    reads only regular files, and its reader's reads are confined to the folder read."""
    if not isinstance(getattr(module, "pickle", None), GuardedPickle):
        module.pickle = GuardedPickle(pickle)
    fs = getattr(module, "FileSystem", None)
    if isinstance(fs, type):
        wrap_method(fs, "create_stream", _opened_safely)
    reader = getattr(module, "FileSystemReader", None)
    if isinstance(reader, type):
        for name in ("read_metadata", "read_data"):
            wrap_method(reader, name, _in_folder)


def _refusal_in(exc: BaseException) -> SandboxLoadError | None:
    """The sandboxload error that dcp wrapped: a ``CheckpointException`` keeps each rank's
    exception in ``failures`` as ``(exception, traceback)``."""
    failures = getattr(exc, "failures", None)
    if not isinstance(failures, dict):
        return None
    for failure in failures.values():
        inner = failure[0] if isinstance(failure, tuple) and failure else failure
        if isinstance(inner, SandboxLoadError):
            return inner
    return None


def _entry(original: Callable[..., Any]) -> Callable[..., Any]:
    guarded = entry_point(original)

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return guarded(*args, **kwargs)
        except BaseException as exc:
            inner = _refusal_in(exc)  # a torch.load refusal of a data record, wrapped
            if inner is not None:
                raise inner from exc
            raise

    return run


def patch_loader(module: ModuleType) -> None:
    """``dcp.load`` (and its deprecated name), and the internal loaders other callers reach
    (the sharded-optimizer loader, loading selected keys, which swallows what
    ``read_metadata`` raises): refusals are not lost in CheckpointException or a warning."""
    for name in ("load", "load_state_dict", "_load_state_dict", "_load_state_dict_from_keys"):
        wrap(module, name, _entry)


def patch_format_utils(module: ModuleType) -> None:
    wrap(module, "dcp_to_torch_save", _entry)
