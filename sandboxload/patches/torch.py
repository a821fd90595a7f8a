"""``torch.load`` and ``torch.serialization.load``, replaced with the same signature."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import loader
from ._common import is_patched, mark, replace_everywhere

_original: Callable[..., Any] | None = None


def original_load() -> Callable[..., Any]:
    """The unpatched ``torch.serialization.load`` (for the opt-in ``allow`` mode only)."""
    if _original is None:
        import torch.serialization

        return torch.serialization.load
    return _original


def patch(torch: ModuleType) -> None:
    """Replace both references; idempotent, and a no-op on an already patched torch."""
    global _original
    ser = torch.serialization
    if is_patched(ser.load):
        return
    original = ser.load
    _original = original

    @functools.wraps(original, updated=())
    def load(
        f: Any,
        map_location: Any = None,
        pickle_module: Any = None,
        *,
        weights_only: bool | None = None,
        mmap: bool | None = None,
        **pickle_load_args: Any,
    ) -> Any:
        return loader.torch_load(
            original,
            f,
            map_location=map_location,
            pickle_module=pickle_module,
            weights_only=weights_only,
            mmap=mmap,
            pickle_load_args=pickle_load_args,
            api="torch.load",
        )

    # wraps() exposes the original through __wrapped__; a stated signature does not.
    del load.__wrapped__
    load.__signature__ = inspect.signature(original)  # type: ignore[attr-defined]
    mark(load)
    # Both names, even if something else wrapped torch.load: no route may stay unguarded.
    ser.load = load
    torch.load = load
    replace_everywhere(original, load)
    _prestart_sandbox()


def _prestart_sandbox() -> None:
    """Have a sandbox worker ready before the first pickle load, when pickles go there."""
    from .. import policy

    try:
        pol = policy.current()
    except Exception:  # a bad policy is reported by the first load, not at import time
        return
    if pol.pickle == "sandbox" and pol.seccomp and pol.spare:
        from ..sandbox import spare

        spare.prestart()
