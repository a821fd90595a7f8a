"""Loading a safetensors file that reached a pickle loader (e.g. ``torch.load``).

The file is handed to safetensors through ``/proc/self/fd/N`` of the descriptor that was
sniffed, so what is parsed is the same inode that was classified.
"""

from __future__ import annotations

from typing import IO, Any

from .maplocation import relocate


def load_state_dict(fd: int | None, f: IO[bytes] | None, map_location: Any) -> dict[str, Any]:
    import safetensors.torch

    if fd is not None:
        tensors = safetensors.torch.load_file(f"/proc/self/fd/{fd}", device="cpu")
    else:
        assert f is not None
        tensors = safetensors.torch.load(f.read())
    return relocate(tensors, map_location)
