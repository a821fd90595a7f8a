"""``torch.load``'s ``map_location`` applied to tensors that were materialised on the CPU."""

from __future__ import annotations

from typing import Any

import torch


def _target(map_location: Any) -> Any:
    if map_location is None:
        return None
    if isinstance(map_location, dict):
        return map_location.get("cpu")
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    return map_location  # a callable, applied per storage


def relocate(tensors: dict[str, torch.Tensor], map_location: Any) -> dict[str, torch.Tensor]:
    """Move CPU tensors as ``torch.load`` would for storages saved with location ``"cpu"``."""
    target = _target(map_location)
    if target is None:
        return tensors
    if callable(target) and not isinstance(target, torch.device):
        return {k: _via_callable(t, target) for k, t in tensors.items()}
    return {k: t.to(torch.device(target)) for k, t in tensors.items()}


def _via_callable(t: torch.Tensor, fn: Any) -> torch.Tensor:
    storage = fn(t.untyped_storage(), "cpu")
    if storage is None:
        return t
    if isinstance(storage, torch.TypedStorage):
        storage = storage.untyped_storage()
    out = torch.empty((0,), dtype=t.dtype, device=storage.device)
    return out.set_(storage, t.storage_offset(), t.size(), t.stride())
