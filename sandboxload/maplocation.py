"""``torch.load``'s ``map_location``, the one implementation both routes use.

The sandbox route applies it to every storage it builds (with the location tag the file
recorded); the safetensors route applies it to each tensor's storage as a ``"cpu"`` storage,
which is what torch itself does when ``torch.load`` is handed a safetensors file.
"""

from __future__ import annotations

from typing import Any

import torch


def restore(storage: torch.UntypedStorage, location: str, map_location: Any) -> Any:
    """Where a storage saved at ``location`` goes, by torch's own rules
    (``default_restore_location`` for every form but a callable's own answer)."""
    default = torch.serialization.default_restore_location
    if map_location is None:
        return default(storage, location)
    if isinstance(map_location, dict):
        return default(storage, map_location.get(location, location))
    if isinstance(map_location, (str, bytes)):
        target = map_location.decode() if isinstance(map_location, bytes) else map_location
        return default(storage, target)
    if isinstance(map_location, torch.device):
        return default(storage, str(map_location))
    result = map_location(storage, location)
    return default(storage, location) if result is None else result


def untyped(storage: Any) -> torch.UntypedStorage:
    return storage.untyped_storage() if isinstance(storage, torch.TypedStorage) else storage


def relocate(tensors: dict[str, torch.Tensor], map_location: Any) -> dict[str, torch.Tensor]:
    """Apply ``map_location`` to tensors that were materialised on the CPU."""
    if map_location is None:
        return tensors
    out = {}
    for key, t in tensors.items():
        storage = untyped(restore(t.untyped_storage(), "cpu", map_location))
        if storage is t.untyped_storage():
            out[key] = t
            continue
        moved = torch.empty((0,), dtype=t.dtype, device=storage.device)
        out[key] = moved.set_(storage, t.storage_offset(), t.size(), t.stride())
    return out
