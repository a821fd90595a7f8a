"""A ``torch.distributed.checkpoint`` folder read whole for conversion, never unpickled here.

torch's own reader does the reading, as ``dcp_to_torch_save`` does (every tensor allocated from
the metadata, each record copied into place), with sandboxload's patches active in this
process: the ``.metadata`` pickle is parsed by the sandbox into dcp's fixed records and checked
against its folder, and every ``.distcp`` record goes through the sandboxed ``torch.load``.
As for a single pickle, ``pickle`` and ``formats`` of the policy do not apply to converting;
the manifest, limits, allowed globals and seccomp do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .. import bootstrap, modelfolder, policy
from . import source


def parts(folder: str) -> list[str]:
    """The files of the checkpoint in ``folder`` (its metadata and data files), sorted."""
    return sorted(
        os.path.join(folder, n)
        for n in os.listdir(folder)
        if modelfolder.is_dcp_file(n) and os.path.isfile(os.path.join(folder, n))
    )


def _from_dcp(record: logging.LogRecord) -> bool:
    return f"{os.sep}torch{os.sep}distributed{os.sep}checkpoint{os.sep}" not in record.pathname


@contextmanager
def _quiet_dcp() -> Iterator[None]:
    """dcp logs on the root logger, with a traceback, each metadata file it fails to read
    before it tries the next; the refusal convert reports says it once, plainly."""
    root = logging.getLogger()
    root.addFilter(_from_dcp)
    try:
        yield
    finally:
        root.removeFilter(_from_dcp)


def load(folder: str) -> tuple[dict[str, Any], int]:
    """The state dict of the checkpoint in ``folder`` (nested as it was saved), and the bytes
    its files take."""
    bootstrap.activate(export_env=False)  # patches torch's reader in this process only
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    size = sum(os.stat(p).st_size for p in parts(folder))
    state: dict[str, Any] = {}
    with policy.overridden(source.API, **source.CONVERTING), _quiet_dcp():
        _load_state_dict(
            state,
            storage_reader=FileSystemReader(folder),
            planner=_EmptyStateDictLoadPlanner(),
            no_dist=True,
        )
    return state, size
