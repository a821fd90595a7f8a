"""Helpers shared by the patches: marking, and replacing copies imported by name."""

from __future__ import annotations

import sys
from typing import Any, TypeVar

F = TypeVar("F")


def mark(fn: F) -> F:
    fn.__sandboxload__ = True  # type: ignore[attr-defined]
    return fn


def is_patched(fn: Any) -> bool:
    return getattr(fn, "__sandboxload__", False) is True


def replace_everywhere(original: Any, patched: Any) -> None:
    """Rebind every module-level name that still holds ``original`` (``from x import f``
    copies made before activation), so no copy stays unguarded."""
    for mod_name, module in list(sys.modules.items()):
        if mod_name == "sandboxload" or mod_name.startswith("sandboxload."):
            continue  # our own references to the originals are deliberate
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is original:
                namespace[name] = patched
