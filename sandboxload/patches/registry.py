"""The originals of patched functions: the patches fill it, the loader reads it.

The loader needs an original in two places only: ``pickle=allow`` (torch's own loader, by
the operator's explicit choice) and the safetensors route (safetensors' own Rust reader, after
sandboxload validated the file). Before any patch ran, the original is still where it lives.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

TORCH_LOAD = "torch.serialization.load"
SAFE_OPEN = "safetensors.safe_open"
SAFETENSORS_LOAD_BYTES = "safetensors.torch.load"

# Where each original lives while unpatched (before any patch ran).
_HOMES = {
    TORCH_LOAD: ("torch.serialization", "load"),
    SAFE_OPEN: ("safetensors._safetensors_rust", "safe_open"),
    SAFETENSORS_LOAD_BYTES: ("safetensors.torch", "load"),
}
_originals: dict[str, Callable[..., Any]] = {}


def keep(key: str, original: Callable[..., Any]) -> None:
    """Record the original of ``key`` (the first one seen wins: never a patched one)."""
    _originals.setdefault(key, original)


def original(key: str) -> Callable[..., Any]:
    """The unpatched function for ``key``."""
    kept = _originals.get(key)
    if kept is not None:
        return kept
    module, attr = _HOMES[key]
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
