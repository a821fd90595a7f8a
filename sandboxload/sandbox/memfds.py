"""The memfds of a sandboxed load, each sized and sealed by the parent.

- ``output``: what the child fills (legacy storages, NumPy data); sealed against growing and
  shrinking before the child sees it, so what it produces is bounded by the parent.
- ``from_bytes``: an in-memory stream, as a read-only file for the child.

(A weight file is not copied into a memfd: tensors that own their memory are views of an
anonymous copy, see :mod:`owned`.)
"""

from __future__ import annotations

import fcntl
import os

READ_ONLY_SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def _create(name: str) -> int:
    return os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)


def output(capacity: int) -> int:
    fd = _create("sandboxload-out")
    try:
        os.ftruncate(fd, capacity)
        # The child may fill it but never grow it: what it produces is bounded by us.
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def from_bytes(data: bytes, name: str = "sandboxload-in") -> int:
    """A sealed, read-only memfd holding ``data`` (for file objects without a real file)."""
    fd = _create(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, READ_ONLY_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd
