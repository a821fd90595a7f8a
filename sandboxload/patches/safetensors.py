"""safetensors' entry points: ``safe_open`` (which ``load_file`` and ``load_model`` use) and
``safetensors.torch.load`` (bytes), with the same signatures, through the loader."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import loader
from ._common import wrap
from .registry import SAFE_OPEN, SAFETENSORS_LOAD_BYTES


def _guarded_open(original: Callable[..., Any]) -> Callable[..., Any]:
    def safe_open(filename: Any, framework: str, *args: Any, **kwargs: Any) -> Any:
        return loader.safetensors_open(filename, framework, args, kwargs, "safetensors.safe_open")

    return safe_open


def _guarded_bytes(original: Callable[..., Any]) -> Callable[..., Any]:
    def load(data: bytes) -> Any:
        return loader.safetensors_bytes(data, api="safetensors.torch.load")

    return load


def patch(module: ModuleType) -> None:
    """Hook for ``safetensors``: its ``safe_open``, and copies other modules already hold."""
    wrap(module, "safe_open", _guarded_open, keep_as=SAFE_OPEN)
    torch_mod = sys.modules.get("safetensors.torch")
    if torch_mod is not None:
        patch_torch(torch_mod)


def patch_torch(module: ModuleType) -> None:
    """Hook for ``safetensors.torch``: ``load(bytes)``; ``load_file``/``load_model`` go through
    the ``safe_open`` they call, the patched one."""
    top = sys.modules["safetensors"]
    wrap(top, "safe_open", _guarded_open, keep_as=SAFE_OPEN)
    module.safe_open = top.safe_open
    wrap(module, "load", _guarded_bytes, keep_as=SAFETENSORS_LOAD_BYTES)
