"""Write one safetensors file atomically, and prove it reads back as what was meant.

The file is written under a hidden temporary name in the destination's directory, flushed
to disk, read back with safetensors' own (unpatched) reader and compared byte for byte with
the tensors of the sandboxed load; only then is it renamed into place. An error, Ctrl-C or
a failed comparison removes the temporary file: no half-written file ever carries the name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import ConversionError
from ..patches import registry
from ..wording import count
from .tensors import Prepared


@dataclass
class Temporary:
    """A private directory of ours beside a destination, held by descriptor: ``path`` reaches
    it through ``/proc/self/fd`` whatever is renamed or linked in its place meanwhile."""

    path: str  # the directory (directory=True) or the file to write inside it
    parent_fd: int
    name: str  # the directory's name in its parent
    fd: int


@contextlib.contextmanager
def temporary_beside(dest: str, directory: bool = False) -> Iterator[Temporary]:
    """A temporary path beside ``dest`` (same file system, so the rename is atomic), inside a
    private directory of ours (mode 0700, held open: in an attacker-writable folder, nobody
    can swap a link in for the file, nor for the directory, between the writing and the
    rename); removed on the way out unless it was published. With ``directory``, the private
    directory itself."""
    parent, base = os.path.split(os.path.abspath(dest))
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        name = f".{base}.{secrets.token_hex(6)}.partial"
        os.mkdir(name, 0o700, dir_fd=pfd)
        fd = _own_directory(pfd, name, dest)
        private = f"/proc/self/fd/{fd}"
        tmp = Temporary(private if directory else os.path.join(private, base), pfd, name, fd)
        try:
            yield tmp
        finally:
            _remove(tmp)
    finally:
        os.close(pfd)


def _own_directory(pfd: int, name: str, dest: str) -> int:
    """The directory just made, opened without following a link; refused if it is not ours."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    except OSError as exc:
        raise ConversionError(
            dest, f"its temporary directory was replaced as it was made ({exc.strerror})", _RACE
        ) from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise ConversionError(dest, "its temporary directory was replaced as it was made", _RACE)
    return fd


_RACE = "Something else writes in this folder: convert a copy that nothing else can write."


def _same(tmp: Temporary) -> bool:
    """Whether the name still reaches our directory (not something put in its place)."""
    try:
        now = os.stat(tmp.name, dir_fd=tmp.parent_fd, follow_symlinks=False)
    except OSError:
        return False
    st = os.fstat(tmp.fd)
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _remove(tmp: Temporary) -> None:
    """Remove our directory if its name still reaches it: not once published as the result
    (renamed away), nor when moved by someone else (what sits there now is not ours)."""
    try:
        if _same(tmp):
            shutil.rmtree(tmp.name, ignore_errors=True, dir_fd=tmp.parent_fd)
    finally:
        os.close(tmp.fd)


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def publish(tmp: Temporary, dest: str, directory: bool = False) -> None:
    """Give the temporary the mode a new file (or folder) gets here, and rename it to
    ``dest``: a folder only if ``dest`` does not exist (or is empty), a file over whatever is
    there."""
    os.chmod(tmp.path, (0o777 if directory else 0o666) & ~_umask())
    if directory:
        parent, base = os.path.split(os.path.abspath(dest))
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not _same(tmp):
                raise ConversionError(dest, "its temporary directory was moved", _RACE)
            os.rename(tmp.name, base, src_dir_fd=tmp.parent_fd, dst_dir_fd=dfd)
            os.fsync(dfd)
        finally:
            os.close(dfd)
    else:
        os.replace(tmp.path, dest)
        sync_directory(os.path.dirname(os.path.abspath(dest)))


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, for a comparison that NaN, -0.0 and every dtype pass exactly."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)


def verify(path: str, prep: Prepared, source: str) -> None:
    """Read ``path`` back and require exactly ``prep``: names, dtypes, shapes, bytes, metadata."""
    safe_open = registry.original(registry.SAFE_OPEN)
    with safe_open(path, framework="pt") as f:
        names = set(f.keys())
        metadata = f.metadata() or {}
        differ = sorted(names ^ set(prep.tensors))
        if not differ:
            for name, want in prep.tensors.items():
                got = f.get_tensor(name)
                if (
                    got.dtype != want.dtype
                    or got.shape != want.shape
                    or not torch.equal(_bits(got), _bits(want))
                ):
                    differ.append(name)
    if differ or metadata != prep.metadata:
        names = ", ".join(differ[:5])
        what = f"{count(len(differ), 'tensor')}: {names}" if differ else "its metadata"
        raise ConversionError(
            source,
            f"the safetensors file written for it did not read back equal ({what})",
            "Nothing was kept; report this as a sandboxload bug.",
        )


def write(prep: Prepared, dest: str, source: str) -> int:
    """Write ``prep`` to ``dest`` atomically, verified; the number of bytes written."""
    import safetensors.torch

    with temporary_beside(dest) as temporary:
        tmp = temporary.path
        try:
            safetensors.torch.save_file(prep.tensors, tmp, metadata=prep.metadata)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            verify(tmp, prep, source)
        except (ConversionError, OSError, MemoryError):
            raise
        except Exception as exc:  # e.g. a tensor named "__metadata__"; not KeyboardInterrupt
            raise ConversionError(
                source,
                f"safetensors cannot store it as it is ({exc})",
                "Rename the offending tensor.",
            ) from None
        publish(temporary, dest)
    return size


def sync_directory(path: str) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
