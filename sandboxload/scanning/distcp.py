"""A ``torch.distributed.checkpoint`` data file, checked record by record as ``dcp.load``
reads it.

A ``.distcp`` file is not one checkpoint: it is ``torch.save`` records back to back, at the
offsets its folder's ``.metadata`` names (parsed as dcp reads it: in the sandbox, into dcp's
own records, then checked against the folder by the run-time rule,
:func:`sandboxload.dcpfolder.check_metadata`). Each distinct record named for this file is
parsed in the sandbox like the ``torch.load`` dcp makes of it (a record named many times is
parsed once). Bytes no record names are never loaded by dcp, so they are not judged.
"""

from __future__ import annotations

import os
from typing import Any

from .. import dcpfolder, formats, loader, pinning, policy, routes
from ..errors import CorruptCheckpointError
from ..fileid import open_regular
from ..sandbox.protocol import READ_DCP
from ..wording import count


def parsed(a: loader.Admitted) -> Any:
    """The admitted (routed, pinned) ``.metadata`` parsed in the sandbox into dcp's records,
    whatever the pickle policy: scan never unpickles."""
    if a.route.name != routes.SANDBOX:  # pickle=allow
        a.route = routes.Route(routes.SANDBOX, "scan", reader=READ_DCP)
    return loader.sandboxed(a, None, None)


def in_folder(meta: Any, name: str) -> dict[str, list[tuple[int, int]]]:
    """``meta`` (read from ``name``) checked against its folder as dcp's patched reader
    checks it; its data files and their distinct records."""
    with dcpfolder.reading(os.path.dirname(os.path.abspath(name))):
        dcpfolder.check_metadata(meta, name)
    return dcpfolder.data_files(meta, name)


def records(path: str, pol: policy.Policy) -> list[tuple[int, int]]:
    """The distinct (offset, length) of the records the folder's ``.metadata`` names in
    ``path``, in order; a refusal of the metadata is raised as it is."""
    meta_path = os.path.join(os.path.dirname(path), ".metadata")
    if not os.path.lexists(meta_path):
        raise CorruptCheckpointError(
            path, "a dcp data file without the .metadata that names its records"
        )
    with loader.open_source(meta_path) as src:
        a = loader.decide(src, pol, "scan", routes.DCP_METADATA, audit=False)
        if a.route.refused:
            raise a.route.refusal(meta_path)
        loader.pin(a)
        found = in_folder(parsed(a), meta_path).get(os.path.basename(path))
    if not found:
        raise CorruptCheckpointError(path, f"{meta_path} names no record in this file")
    return found


def check(path: str, pol: policy.Policy) -> str:
    """Every record of ``path`` parsed in the sandbox; the detail of a pass. Raises the
    typed error of the first record (or metadata) that fails."""
    from ..sandbox import memfds
    from ..sandbox.load import parse_only

    found = records(path, pol)
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        pinning.check(path, fd, None, pol.manifest, path)
        storages = 0
        for offset, length in found:  # transformed records: the metadata was refused
            label = f"{path} [record at byte {offset}]"
            if offset + length > size:
                raise CorruptCheckpointError(label, "the record runs past the end of the file")
            data = os.pread(fd, length, offset)
            src = loader.memory_source(data, None, label)
            a = loader.decide(src, pol, "scan", routes.ANY_WEIGHTS, audit=False)
            if a.route.refused:
                raise a.route.refusal(label)
            reader = a.route.reader or formats.READER.get(a.fmt)
            if reader is None:
                raise CorruptCheckpointError(label, f"a {a.fmt} record, not a torch.save one")
            mem = memfds.from_bytes(data)
            try:
                storages += parse_only(mem, length, reader, label, pol)
            finally:
                os.close(mem)
    finally:
        os.close(fd)
    return (
        f"dcp data: {count(len(found), 'record')}, each a pickle with only data, "
        f"{count(storages, 'storage')} (loads through the sandbox)"
    )
