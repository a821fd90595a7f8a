"""A ``torch.distributed.checkpoint`` folder: what its ``.metadata`` may name in it.

The metadata's records are checked for themselves in the sandbox's rebuild; here they are
checked against the folder they were read from, while a reader of that folder runs: every
data file it names is a plain file name ending in ``.distcp`` (dcp only ever writes
``__<rank>_<n>.distcp``: a record in ``NOTES.md`` or in ``.metadata`` itself is one no scan of
data files would check), a regular file inside the folder (links resolved: a linked file must
not lead out), its records do not overlap (a record named twice counts once), every record
lies within its file, and the tensors it declares are not larger than the bytes stored for
them (dcp allocates every tensor whole before reading its chunks). Each data file is checked
again, on the descriptor, when dcp opens it. ``sandboxload scan`` applies the same checks
(:func:`check_metadata` under :func:`reading`).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .errors import CorruptCheckpointError
from .modelfolder import DCP_DATA_SUFFIX, inside

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


def data_files(meta: Any, name: str) -> dict[str, list[tuple[int, int]]]:
    """Each data file ``meta`` (read from ``name``) names, with its distinct records
    ``(offset, length)`` in order. A name dcp never writes, or records of one file that
    overlap (other than the same record named twice), are a CorruptCheckpointError."""
    storage = getattr(meta, "storage_data", None)
    found: dict[str, set[tuple[int, int]]] = {}
    for info in (storage or {}).values() if isinstance(storage, dict) else ():
        rel = info.relative_path
        if rel not in found:
            _check_name(rel, name)
            found[rel] = set()
        found[rel].add((info.offset, info.length))
    out = {}
    for rel, records in found.items():
        ordered = sorted(records)
        for (a, n), (b, _m) in itertools.pairwise(ordered):
            if b < a + n:
                raise CorruptCheckpointError(
                    name,
                    f"two records of {rel!r} overlap (bytes {a}-{a + n} and from {b}); "
                    "dcp writes each record once, one after the other",
                )
        out[rel] = ordered
    return out


def _check_name(rel: Any, name: str) -> None:
    if (
        not isinstance(rel, str)
        or os.path.basename(rel) != rel
        or os.sep in rel
        or rel in (".", "..")
        or not rel.endswith(DCP_DATA_SUFFIX)
    ):
        raise CorruptCheckpointError(
            name,
            f"it names {rel!r} as a data file: dcp writes its records only to files named "
            f"like __0_0{DCP_DATA_SUFFIX} in the checkpoint folder",
        )


def check_metadata(meta: Any, name: str) -> None:
    """``meta`` (read from ``name``): its data files' names and records, then, while a
    local folder is read, against that folder."""
    files = data_files(meta, name)
    root = _root.get()
    if root is None or not isinstance(getattr(meta, "storage_data", None), dict):
        return
    stored = 0
    for rel, records in files.items():
        size = _data_file_size(root, rel, name)
        offset, length = records[-1]  # the last ends last: they do not overlap
        if offset + length > size:
            raise CorruptCheckpointError(
                name,
                f"a record of {rel!r} ends at byte {offset + length}, past "
                f"the end of the file ({size} bytes)",
            )
        stored += sum(n for _o, n in records)
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
