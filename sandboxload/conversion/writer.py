"""Write one safetensors file atomically, and prove it reads back as what was meant.

The file is written under a hidden temporary name in the destination's directory, flushed
to disk, read back with safetensors' own (unpatched) reader and compared byte for byte with
the tensors of the sandboxed load; only then is it renamed into place. An error, Ctrl-C or
a failed comparison removes the temporary file: no half-written file ever carries the name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import torch

from ..errors import ConversionError
from ..patches import registry
from ..wording import count
from .tensors import Prepared


@contextlib.contextmanager
def temporary_beside(dest: str, directory: bool = False) -> Iterator[str]:
    """A temporary path beside ``dest`` (same file system, so the rename is atomic), inside a
    private directory of ours (mode 0700: in an attacker-writable folder, nobody else can swap
    a link in for the file between its writing and its rename); removed on the way out
    unless it was published. With ``directory``, the private directory itself."""
    parent, base = os.path.split(os.path.abspath(dest))
    private = tempfile.mkdtemp(prefix=f".{base}.", suffix=".partial", dir=parent)
    try:
        yield private if directory else os.path.join(private, base)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def publish(tmp: str, dest: str, directory: bool = False) -> None:
    """Give ``tmp`` the mode a new file (or folder) gets here, and rename it to ``dest``: a
    folder only if ``dest`` does not exist (or is empty), a file over whatever is there."""
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
    if directory:
        os.rename(tmp, dest)
    else:
        os.replace(tmp, dest)
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

    with temporary_beside(dest) as tmp:
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
        publish(tmp, dest)
    return size


def sync_directory(path: str) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
