"""The folder converted in place, held by descriptor while it is written to.

Every directory that receives a result or loses a pickle is opened once, before anything is
written, without following links, each from the one above it; results are written and
pickles removed through ``/proc/self/fd`` paths and ``dir_fd``, so a directory renamed or
swapped for a link meanwhile (by whoever else writes in the folder) cannot redirect a write
or a removal to another folder. A pickle is removed only if its name still reaches the file
that was converted.
"""

from __future__ import annotations

import os

from ..errors import ConversionError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
Ident = tuple[int, int]


def ident(st: os.stat_result) -> Ident:
    return st.st_dev, st.st_ino


class Pinned:
    def __init__(self, root: str) -> None:
        self.root = root
        self.fds: dict[str, int] = {"": os.open(root, _DIR)}

    def fd(self, rel_dir: str) -> int:
        """The descriptor of the directory ``rel_dir`` (relative to the root)."""
        rel_dir = "" if os.path.normpath(rel_dir) == "." else os.path.normpath(rel_dir)
        found = self.fds.get(rel_dir)
        if found is not None:
            return found
        parent, name = os.path.split(rel_dir)
        try:
            fd = os.open(name, _DIR, dir_fd=self.fd(parent))
        except OSError as exc:
            raise ConversionError(
                os.path.join(self.root, rel_dir),
                f"the directory changed during the conversion ({exc.strerror})",
                "Something else writes in this folder: convert a copy nothing else can write.",
            ) from None
        self.fds[rel_dir] = fd
        return fd

    def path(self, rel: str) -> str:
        """The file ``rel`` reached through its directory's descriptor."""
        here, name = os.path.split(rel)
        return f"/proc/self/fd/{self.fd(here)}/{name}"

    def remove(self, rel: str, converted: Ident) -> bool:
        """Remove ``rel`` if its name still reaches the file ``converted``; False if not."""
        here, name = os.path.split(rel)
        fd = self.fd(here)
        try:
            if ident(os.stat(name, dir_fd=fd, follow_symlinks=False)) != converted:
                return False
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            return False
        return True

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
