"""The one way a function gets patched: wrap, mark, keep the original, rebind every copy."""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from .. import modelfolder
from ..refusals import scope
from . import registry

Maker = Callable[[Callable[..., Any]], Callable[..., Any]]


def mark(fn: Any) -> Any:
    fn.__sandboxload__ = True
    return fn


def is_patched(fn: Any) -> bool:
    return getattr(fn, "__sandboxload__", False) is True


def _decorate(patched: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """The original's name, docstring and signature, but no ``__wrapped__`` (which would hand
    callers the unguarded original); marked as ours."""
    functools.update_wrapper(patched, original, updated=())
    del patched.__wrapped__  # type: ignore[attr-defined]
    with contextlib.suppress(TypeError, ValueError):  # a Rust callable may have none
        patched.__signature__ = inspect.signature(original)  # type: ignore[attr-defined]
    return mark(patched)


def wrap(
    module: ModuleType,
    name: str,
    make: Maker,
    *,
    keep_as: str | None = None,
    also: Iterable[tuple[Any, str]] = (),
) -> Callable[..., Any] | None:
    """Replace ``module.name`` with ``make(original)``; a no-op if absent or already patched.

    ``keep_as`` records the original in :mod:`registry`; ``also`` names further
    ``(namespace, attribute)`` slots to point at the replacement; every module-level copy
    made by ``from x import f`` is rebound.
    """
    original = getattr(module, name, None)
    if original is None or is_patched(original):
        return None
    patched = _decorate(make(original), original)
    if keep_as is not None:
        registry.keep(keep_as, original)
    setattr(module, name, patched)
    for namespace, attr in also:
        setattr(namespace, attr, patched)
    replace_everywhere(original, patched)
    return patched


def wrap_method(cls: type, name: str, make: Maker) -> Callable[..., Any] | None:
    """The same for a function, classmethod or staticmethod defined on ``cls`` itself."""
    raw = vars(cls).get(name)
    binder = type(raw) if isinstance(raw, (classmethod, staticmethod)) else None
    original = raw.__func__ if binder is not None else raw  # type: ignore[union-attr]
    if not callable(original) or is_patched(original):
        return None
    patched = _decorate(make(original), original)
    setattr(cls, name, binder(patched) if binder is not None else patched)
    return patched


def _items(d: dict[str, Any]) -> list[tuple[str, Any]]:
    """A snapshot of ``d`` (``sys.modules``, a module's namespace). Another thread may import
    while it is taken (a collection during the copy can run a finaliser and switch threads:
    seen once in CI as "dictionary changed size during iteration"): a torn copy is retaken."""
    while True:
        try:
            return list(d.copy().items())
        except RuntimeError:
            continue


def replace_everywhere(original: Any, patched: Any) -> None:
    """Rebind every module-level name that still holds ``original`` (``from x import f``
    copies made before activation), so no copy stays unguarded."""
    for mod_name, module in _items(sys.modules):
        if mod_name == "sandboxload" or mod_name.startswith("sandboxload."):
            continue  # our own references to the originals are deliberate
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, value in _items(namespace):
            if value is original:
                namespace[attr] = patched


def entry_point(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A library's user-facing entry point: refusals swallowed inside are re-raised at its
    end (:mod:`refusals`), and weight loads are confined to the local folder it names
    (:func:`modelfolder.loading_from`)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with scope(), modelfolder.loading_from(modelfolder.folder_argument(args, kwargs)):
            return fn(*args, **kwargs)

    return run
