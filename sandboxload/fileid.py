"""Identity of an open file, for caches that must never outlive the bytes they describe.

(device, inode, size, mtime, ctime) of the open descriptor: any write changes the mtime and
the ctime, and the ctime cannot be set back without privileges, so a changed file never
matches an old entry.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from typing import Generic, TypeVar

FileId = tuple[int, int, int, int, int]
V = TypeVar("V")


def identity(fd: int) -> FileId | None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class LRU(Generic[V]):
    """A small bounded map (most recently used kept)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[object, V] = OrderedDict()

    def get(self, key: object) -> V | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: object, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)
