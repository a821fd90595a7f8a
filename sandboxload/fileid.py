"""Weight files as the parent opens them: without blocking, regular files only; and their
identity, for caches that must never outlive the bytes they describe.

A path from a model folder may name a FIFO (``open`` would block forever, before any
deadline applies), a device (``/dev/zero`` never ends), a socket or a directory: it is opened
with ``O_NONBLOCK`` and refused unless ``fstat`` says it is a regular file.

Identity is (device, inode, size, mtime, ctime) of the open descriptor: any write changes the
mtime and the ctime, and the ctime cannot be set back without privileges, so a changed file
never matches an old entry.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import NotARegularFileError

FileId = tuple[int, int, int, int, int]
V = TypeVar("V")
_KINDS = {
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
    stat.S_IFDIR: "directory",
}


def open_regular(path: str) -> int:
    """A read-only descriptor of ``path``, which must be a regular file (never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno == errno.ENXIO and stat.S_ISSOCK(os.stat(path).st_mode):
            raise NotARegularFileError(path, _KINDS[stat.S_IFSOCK]) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(path, _KINDS.get(stat.S_IFMT(mode), "special file"))
    except BaseException:
        os.close(fd)
        raise
    return fd


# A file changed less than this long ago may change again within the same tick of the
# file system's clock (the kernel stamps times from a coarse clock, some file systems to the
# second), keeping the same identity: what is known of it is not kept (git's "racy clean").
SETTLE_NS = 2_000_000_000


def settled(key: FileId) -> bool:
    """Whether a file of identity ``key`` was last changed long enough ago that any further
    change will show in its identity (``ctime``: a write, and any ``utime`` after one, sets it
    to now)."""
    return time.time_ns() - key[4] > SETTLE_NS


def identity(fd: int) -> FileId | None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class LRU(Generic[V]):
    """A bounded map (most recently used kept), safe to share between threads: a lookup and
    an eviction never interleave. Bounded by entries and, when ``max_bytes`` is given, by
    the total ``weigh(value)`` of what it holds (a value heavier than that is not kept)."""

    def __init__(
        self, size: int, max_bytes: int | None = None, weigh: Callable[[V], int] | None = None
    ) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.weigh = weigh or (lambda value: 0)
        self.bytes = 0
        self.items: OrderedDict[object, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: object) -> V | None:
        with self._lock:
            item = self.items.get(key)
            if item is None:
                return None
            self.items.move_to_end(key)
            return item[0]

    def put(self, key: object, value: V) -> None:
        weight = self.weigh(value)
        if self.max_bytes is not None and weight > self.max_bytes:
            return
        with self._lock:
            old = self.items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self.items[key] = (value, weight)
            self.bytes += weight
            while len(self.items) > self.size or (
                self.max_bytes is not None and self.bytes > self.max_bytes
            ):
                _, (_, dropped) = self.items.popitem(last=False)
                self.bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self.items.clear()
            self.bytes = 0
