"""The checkpoints: random float32 state dicts of a given size and tensor count, written by
``torch.save`` or ``safetensors.torch.save_file`` into a scratch directory."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

MIB = 1 << 20
FLOAT32 = 4


@dataclass(frozen=True)
class Point:
    """One checkpoint shape: ``mb`` MiB of float32 in ``tensors`` equal tensors."""

    axis: str  # "size", "count" or "one" (the one-tensor file)
    mb: float
    tensors: int

    @property
    def label(self) -> str:
        size = f"{self.mb:g} MB" if self.mb < 1024 else f"{self.mb / 1024:g} GB"
        return f"{size}, {self.tensors} tensor{'s' if self.tensors != 1 else ''}"

    @property
    def nbytes(self) -> int:
        return int(self.mb * MIB)


def state_dict(point: Point, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    numel = max(1, point.nbytes // FLOAT32 // point.tensors)
    if point.tensors == 1 and numel == 256 * 256:
        return {"w": torch.rand(256, 256, generator=g)}
    return {f"layers.{i}.weight": torch.rand(numel, generator=g) for i in range(point.tensors)}


def write(sd: dict[str, torch.Tensor], kind: str, directory: Path) -> Path:
    """The state dict as a ``kind`` file, flushed to disk (so that write-back does not run
    during the measurements; the page cache stays warm)."""
    if kind == "pickle":
        path = directory / "checkpoint.bin"
        torch.save(sd, path)
    else:
        import safetensors.torch

        path = directory / "checkpoint.safetensors"
        safetensors.torch.save_file(sd, str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def room_for(point: Point, directory: Path) -> bool:
    """Whether the scratch directory can hold one file of this point with a margin."""
    return shutil.disk_usage(directory).free > 1.5 * point.nbytes + 256 * MIB
