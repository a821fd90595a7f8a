"""``torch.load`` and ``torch.serialization.load``, replaced with the same signature."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import loader
from ._common import wrap
from .registry import TORCH_LOAD


def _guarded(original: Callable[..., Any]) -> Callable[..., Any]:
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
            f,
            map_location=map_location,
            pickle_module=pickle_module,
            weights_only=weights_only,
            mmap=mmap,
            pickle_load_args=pickle_load_args,
            api="torch.load",
        )

    return load


def patch(torch: ModuleType) -> None:
    """Replace both references; idempotent, and a no-op on an already patched torch.

    Both names are set even if something else wrapped ``torch.load``: no route may stay
    unguarded."""
    if wrap(torch.serialization, "load", _guarded, keep_as=TORCH_LOAD, also=[(torch, "load")]):
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
