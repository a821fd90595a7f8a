"""The memfds of a sandboxed load, each sized and sealed by the parent.

- ``output``: what the child fills (legacy storages, NumPy data); sealed against growing and
  shrinking before the child sees it, so what it produces is bounded by the parent.
- ``from_bytes``: an in-memory stream, as a read-only file for the child.
- ``snapshot``: a weight file copied once into a sealed memfd. The child parses the snapshot
  and the tensors are built from it, so they hold exactly the bytes that were read (and
  pinned): a file rewritten or truncated afterwards changes nothing, and cannot SIGBUS the
  process as a mapping of the file itself can.
"""

from __future__ import annotations

import fcntl
import os

from ..errors import CorruptCheckpointError

READ_ONLY_SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
CHUNK = 8 << 20


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


def snapshot(fd: int, size: int, name: str) -> int:
    """``size`` bytes of the file open on ``fd``, copied (in the kernel where it can) into a
    sealed, read-only memfd."""
    snap = _create("sandboxload-snapshot")
    try:
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(fd, snap, size - copied, copied, copied)
                if n == 0:
                    break
                copied += n
        except OSError:  # a kernel or filesystem pair without copy_file_range: copy by hand
            buf = bytearray(CHUNK)
            while copied < size:
                n = os.preadv(fd, [memoryview(buf)[: min(CHUNK, size - copied)]], copied)
                if n == 0:
                    break
                os.pwrite(snap, memoryview(buf)[:n], copied)
                copied += n
        if copied != size or os.fstat(snap).st_size != size:
            raise CorruptCheckpointError(name, "the file changed size while it was read")
        fcntl.fcntl(snap, fcntl.F_ADD_SEALS, READ_ONLY_SEALS)
    except BaseException:
        os.close(snap)
        raise
    return snap
