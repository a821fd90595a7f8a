"""safetensors' entry points: ``safe_open`` (which ``load_file`` and ``load_model`` use) and
``safetensors.torch.load`` (bytes), with the same signatures, through the loader."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import loader
from ._common import is_patched, mark, replace_everywhere

_originals: dict[str, Callable[..., Any]] = {}


def original_safe_open() -> Callable[..., Any]:
    from safetensors._safetensors_rust import safe_open

    return safe_open  # the Rust class itself is never replaced


def original_load_bytes() -> Callable[..., Any]:
    import safetensors.torch

    return _originals.get("load", safetensors.torch.load)


def _patched_safe_open(original: Callable[..., Any]) -> Callable[..., Any]:
    def safe_open(filename: Any, framework: str, *args: Any, **kwargs: Any) -> Any:
        return loader.safetensors_open(
            original, filename, framework, args, kwargs, api="safetensors.safe_open"
        )

    safe_open.__doc__ = original.__doc__
    return mark(safe_open)


def patch(module: ModuleType) -> None:
    """Hook for ``safetensors``: its ``safe_open``, and copies other modules already hold."""
    current = module.safe_open
    if is_patched(current):
        return
    patched = _patched_safe_open(current)
    module.safe_open = patched
    replace_everywhere(current, patched)
    torch_mod = sys.modules.get("safetensors.torch")
    if torch_mod is not None:
        patch_torch(torch_mod)


def patch_torch(module: ModuleType) -> None:
    """Hook for ``safetensors.torch``: ``load(bytes)``; ``load_file``/``load_model`` go through
    the patched ``safe_open`` they call."""
    top = sys.modules["safetensors"]
    if not is_patched(top.safe_open):
        patch(top)
    module.safe_open = top.safe_open
    if is_patched(module.load):
        return
    original = module.load
    _originals["load"] = original

    @functools.wraps(original, updated=())
    def load(data: bytes) -> Any:
        return loader.safetensors_bytes(original, data, api="safetensors.torch.load")

    del load.__wrapped__
    mark(load)
    module.load = load
    replace_everywhere(original, load)
