"""The memfds of a sandboxed load, each sized and sealed by the parent.

- ``output``: what the child fills (legacy storages, NumPy data); sealed against growing and
  shrinking before the child sees it, so what it produces is bounded by the parent.
- ``from_bytes``: an in-memory stream, as a read-only file for the child.
- ``pinned_snapshot``: a pinned weight file, read once into a sealed memfd and hashed there,
  so the bytes parsed and loaded are the bytes checked against the pin. (An unpinned file is
  not copied into a memfd: its tensors are views of an anonymous copy, see :mod:`owned`.)
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os

from ..errors import CorruptCheckpointError, HashMismatchError

READ_ONLY_SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
CHUNK = 64 << 20


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


def pinned_snapshot(fd: int, size: int, name: str, digest: str) -> int:
    """``size`` bytes of the file on ``fd`` in a sealed, read-only memfd, whose SHA-256 must
    be ``digest`` -- the pin the file was admitted under. The child parses exactly these
    bytes and the tensors are views of them, so what loads is what is pinned even if the
    file is written meanwhile (a write through a shared mapping changes no mtime or ctime
    until writeback, so an identity check cannot see it)."""
    snap = _create("sandboxload-snapshot")
    try:
        os.ftruncate(snap, size)
        h = hashlib.sha256()
        if size:
            with mmap.mmap(snap, size, mmap.MAP_SHARED) as m, memoryview(m) as view:
                pos = 0
                while pos < size:
                    n = os.preadv(fd, [view[pos : min(pos + CHUNK, size)]], pos)
                    if n == 0:
                        raise CorruptCheckpointError(name, "the file shrank while it was read")
                    h.update(view[pos : pos + n])
                    pos += n
        if h.hexdigest() != digest:
            raise HashMismatchError(
                name, digest, h.hexdigest(), "the digest it was admitted under (it changed since)"
            )
        fcntl.fcntl(snap, fcntl.F_ADD_SEALS, READ_ONLY_SEALS)
    except BaseException:
        os.close(snap)
        raise
    return snap
