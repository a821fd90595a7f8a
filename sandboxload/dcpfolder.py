"""A ``torch.distributed.checkpoint`` folder: what its ``.metadata`` may name in it.

The metadata's records are checked for themselves in the sandbox's rebuild; here they are
checked against the folder they were read from, while a reader of that folder runs: every
data file it names is a regular file inside the folder (links resolved: a linked file or
sub-directory must not lead out), every record lies within its file, and the tensors it
declares are not larger than the bytes stored for them (dcp allocates every tensor whole
before reading its chunks). Each data file is checked again, on the descriptor, when dcp
opens it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .errors import CorruptCheckpointError
from .modelfolder import inside

SLACK = 64 << 20  # declared tensor bytes beyond what is stored (each record's own overhead)
_root: ContextVar[str | None] = ContextVar("sandboxload_dcp_root", default=None)


@contextmanager
def reading(path: Any) -> Iterator[None]:
    """While a reader of the checkpoint folder ``path`` runs (a local directory; other
    storage is left to dcp)."""
    try:
        local = os.path.isdir(path)
    except (TypeError, ValueError):
        local = False
    token = _root.set(os.path.realpath(path) if local else None)
    try:
        yield
    finally:
        _root.reset(token)


def check_opened(fd: int, name: str) -> None:
    """The file dcp just opened, by its descriptor, lies inside the folder being read."""
    root = _root.get()
    if root is None:
        return
    real = os.readlink(f"/proc/self/fd/{fd}")
    if not inside(root, real):
        raise CorruptCheckpointError(
            name, f"it leads outside the checkpoint folder {root} (to {real}); dcp would read it"
        )


def check_metadata(meta: Any, name: str) -> None:
    """``meta`` (read from ``name``) against the folder being read."""
    root = _root.get()
    storage = getattr(meta, "storage_data", None)
    if root is None or not isinstance(storage, dict):
        return
    sizes: dict[str, int] = {}
    stored = 0
    for info in storage.values():
        rel = info.relative_path
        if rel not in sizes:
            sizes[rel] = _data_file_size(root, rel, name)
        if info.offset + info.length > sizes[rel]:
            raise CorruptCheckpointError(
                name,
                f"a record of {rel!r} ends at byte {info.offset + info.length}, past "
                f"the end of the file ({sizes[rel]} bytes)",
            )
        stored += info.length
    declared = sum(
        math.prod(v.size) * v.properties.dtype.itemsize
        for v in meta.state_dict_metadata.values()
        if hasattr(v, "chunks")
    )
    if declared > stored + SLACK:
        raise CorruptCheckpointError(
            name, f"its tensors would take {declared} bytes, but only {stored} are stored"
        )


def _data_file_size(root: str, rel: str, name: str) -> int:
    path = os.path.join(root, rel)
    real = os.path.realpath(path)
    if not inside(root, real):
        raise CorruptCheckpointError(
            name, f"the data file {rel!r} leads outside the checkpoint folder (to {real})"
        )
    try:
        st = os.stat(real)
    except OSError as exc:
        raise CorruptCheckpointError(name, f"the data file {rel!r}: {exc.strerror}") from None
    if not os.path.isfile(real):
        raise CorruptCheckpointError(name, f"the data file {rel!r} is not a regular file")
    return st.st_size
