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
    """A hidden temporary path beside ``dest`` (same file system, so the rename is atomic),
    removed on the way out unless it was renamed to ``dest``."""
    parent, base = os.path.split(os.path.abspath(dest))
    if directory:
        tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".partial", dir=parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".partial", dir=parent)
        os.close(fd)
    try:
        yield tmp
    finally:
        if os.path.lexists(tmp):
            if directory:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.unlink(tmp)


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
        except (ConversionError, OSError):
            raise
        except Exception as exc:  # e.g. a tensor named "__metadata__"; not KeyboardInterrupt
            raise ConversionError(
                source,
                f"safetensors cannot store it as it is ({exc})",
                "Rename the offending tensor.",
            ) from None
        os.replace(tmp, dest)
    sync_directory(os.path.dirname(os.path.abspath(dest)))
    return size


def sync_directory(path: str) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
