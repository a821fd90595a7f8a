"""Which file in-memory weights came from, so a pin is checked against *that path's* entry.

A pin is a statement about a path. When a library reads a weight file itself and hands the
bytes (or a stream) to a loader, the loader must still know the path:

- a file object open on a regular file names it through its descriptor (``of_file``): the
  name the library opened it by if that still names the same inode, else the kernel's
  ``/proc/self/fd`` link -- never a ``name`` attribute alone, which anyone can set;
- bytes read by a library whose read sandboxload intercepts (``tracked_open``, installed as
  ``open`` in the library's module) are recognised by identity (``of_bytes``): the last whole
  file read on this thread, kept only until the file object is closed.

Bytes nobody can trace have no origin; under a manifest they are refused.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import weakref
from typing import Any

from .fileid import open_regular

_last = threading.local()  # .read = (bytes, path, weakref to the reader) of the last read


class _TrackedReader(io.BufferedReader):
    """A binary file whose whole-file ``read()`` is remembered with its path."""

    origin: str

    def read(self, size: int | None = -1) -> bytes:
        whole = size is None or size < 0
        at_start = whole and self.tell() == 0
        data = super().read(size)
        if at_start:
            _last.read = (data, self.origin, weakref.ref(self))
        return data

    def close(self) -> None:
        last = getattr(_last, "read", None)
        if last is not None and last[2]() is self:
            _last.read = None  # the bytes are the caller's now; stop holding them
        super().close()


def tracked_open(file: Any, mode: str = "r", buffering: int = -1, *args: Any, **kwargs: Any) -> Any:
    """``open`` for a library module: binary reads of a path are tracked (and never block
    on a FIFO); everything else is the builtin ``open``."""
    if (
        sorted(mode) != ["b", "r"]
        or buffering == 0  # unbuffered: the builtin's FileIO, as asked
        or args
        or kwargs
        or not isinstance(file, (str, bytes, os.PathLike))
        or os.path.isdir(file)  # the builtin's IsADirectoryError
    ):
        return open(file, mode, buffering, *args, **kwargs)
    path = os.fsdecode(os.fspath(file))
    raw = io.FileIO(open_regular(path), "rb", closefd=True)
    raw.name = path  # type: ignore[misc]
    reader = _TrackedReader(raw, buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE)
    reader.origin = os.path.abspath(path)
    return reader


def of_bytes(data: object) -> str | None:
    """The path these very bytes were read from by a tracked open, if they were."""
    last = getattr(_last, "read", None)
    if last is None or last[0] is not data:
        return None
    return str(last[1])


def regular_fd(f: Any) -> int | None:
    """The descriptor a file object is open on, if it is a regular file's."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    if not isinstance(fd, int):
        return None
    try:
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None


def of_file(f: Any) -> str | None:
    """The path of the regular file a file object is open on, or None (a BytesIO, a pipe,
    a socket, a deleted or anonymous file)."""
    fd = regular_fd(f)
    if fd is None:
        return None
    st = os.fstat(fd)
    name = getattr(f, "name", None)
    if isinstance(name, (str, bytes)):
        try:
            named = os.stat(name)
        except (OSError, ValueError):
            named = None
        if named is not None and (named.st_dev, named.st_ino) == (st.st_dev, st.st_ino):
            return os.path.abspath(os.fsdecode(name))  # the path the caller opened
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if not link.startswith("/") or link.endswith(" (deleted)"):
        return None  # memfd:..., anon_inode:..., or a file unlinked since
    return link
