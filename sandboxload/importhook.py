"""Post-import hooks: run a function on a module right after its body has executed.

One finder sits first on ``sys.meta_path``. For every import it does a single dict lookup;
only for a watched name does it ask the other finders for the spec and wrap the loader so the
hook runs after ``exec_module``. A module that is already imported is hooked at once.
Hooks are named as ``"package.module:function"`` and imported only when they fire, and this
module imports nothing beyond ``sys``: it is on the interpreter start-up path.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

_hooks: dict[str, list[str]] = {}


def _call(target: str, module: ModuleType) -> None:
    mod_name, _, func = target.partition(":")
    __import__(mod_name)
    getattr(sys.modules[mod_name], func)(module)


class _HookedLoader:
    """Stands in for the real loader during one import, then gets out of the way."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Put the real loader back first, so the module body and later reloads see only it.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        for target in _hooks.get(self._name, ()):
            _call(target, module)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._loader, attr)


class _PostImportFinder:
    """The meta-path finder that notices watched imports."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in _hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, fullname)
                return spec
        return None


_finder = _PostImportFinder()


def register(name: str, target: str) -> None:
    """Call ``target`` (``"pkg.mod:func"``) with module ``name`` once it is imported, or now."""
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    targets = _hooks.setdefault(name, [])
    if target in targets:
        return
    targets.append(target)
    module = sys.modules.get(name)
    if module is not None:
        _call(target, module)
