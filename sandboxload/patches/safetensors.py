"""safetensors' entry points, every one that opens or parses data, through the loader:

- ``safe_open(path)`` (which ``load_file`` and ``load_model`` of every framework module use);
- ``_safe_open_handle(file object)``, which safetensors resolves by the object's ``name``:
  sandboxload opens the file its descriptor is open on instead, through the same gate;
- ``deserialize(bytes)`` (behind ``safetensors.numpy/flax/paddle/mlx/tensorflow.load``) and
  ``safetensors.torch.load(bytes)``: pinned against the file the bytes were read from.

They are replaced where safetensors defines them (its Rust module) and re-exports them, and
in every module that copied them. ``serialize``/``serialize_file``/``save*`` only write.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import loader
from ._common import wrap
from .registry import SAFE_OPEN, SAFETENSORS_LOAD_BYTES

_RUST = "safetensors._safetensors_rust"


def _guarded_open(original: Callable[..., Any]) -> Callable[..., Any]:
    def safe_open(filename: Any, framework: str, *args: Any, **kwargs: Any) -> Any:
        return loader.safetensors_open(filename, framework, args, kwargs, "safetensors.safe_open")

    return safe_open


def _guarded_handle(original: Callable[..., Any]) -> Callable[..., Any]:
    def _safe_open_handle(f: Any, framework: str, *args: Any, **kwargs: Any) -> Any:
        return loader.safetensors_handle(
            f, framework, args, kwargs, "safetensors._safe_open_handle"
        )

    return _safe_open_handle


def _guarded_deserialize(original: Callable[..., Any]) -> Callable[..., Any]:
    def deserialize(bytes: Any) -> Any:  # safetensors names its parameter so
        return loader.safetensors_bytes(bytes, "safetensors.deserialize", original)

    return deserialize


def _guarded_bytes(original: Callable[..., Any]) -> Callable[..., Any]:
    def load(data: bytes) -> Any:
        return loader.safetensors_bytes(data, "safetensors.torch.load", original)

    return load


def _patch_top(top: ModuleType) -> None:
    rust = sys.modules.get(_RUST)
    for module in (rust, top):
        if module is None:
            continue
        wrap(module, "safe_open", _guarded_open, keep_as=SAFE_OPEN)
        wrap(module, "_safe_open_handle", _guarded_handle)
        wrap(module, "deserialize", _guarded_deserialize)
    # A second module's wrap found the first's replacement already there (a no-op): point
    # every name at the one guarded function.
    if rust is not None:
        for name in ("safe_open", "_safe_open_handle", "deserialize"):
            setattr(top, name, getattr(rust, name))


def patch(module: ModuleType) -> None:
    """Hook for ``safetensors``: its entry points, and copies other modules already hold."""
    _patch_top(module)
    torch_mod = sys.modules.get("safetensors.torch")
    if torch_mod is not None:
        patch_torch(torch_mod)


def patch_torch(module: ModuleType) -> None:
    """Hook for ``safetensors.torch``: ``load(bytes)``; ``load_file``/``load_model`` go through
    the ``safe_open`` they call, the patched one."""
    top = sys.modules["safetensors"]
    _patch_top(top)
    module.safe_open = top.safe_open
    module.deserialize = top.deserialize
    wrap(module, "load", _guarded_bytes, keep_as=SAFETENSORS_LOAD_BYTES)
