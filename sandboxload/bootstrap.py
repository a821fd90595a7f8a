"""Activation: the run-once switch that the ``.pth`` file, ``sitecustomize`` and the CLI call.

Kept free of heavy imports: with ``SANDBOXLOAD=1`` this module runs in every interpreter of
the environment, so it only registers post-import hooks; the patches (and the policy, torch,
...) are imported when their target library is.
"""

from __future__ import annotations

import os
import sys

from . import importhook
from ._env import ACTIVATE_ENV, is_true

# Library module -> the patch applied right after it is imported.
PATCHES = {
    "torch": "sandboxload.patches.torch:patch",
}

_active = False


def is_active() -> bool:
    return _active


def activate(*, export_env: bool = True) -> None:
    """Patch every target library now (if imported) or when it is imported. Idempotent.

    With ``export_env`` the activation flag is put in ``os.environ`` so that child processes
    of this one (``subprocess``, ``multiprocessing`` spawn) activate too.
    """
    global _active
    if _active:
        return
    if export_env and not is_true(os.environ.get(ACTIVATE_ENV)):
        os.environ[ACTIVATE_ENV] = "1"
    for name, target in PATCHES.items():
        importhook.register(name, target)
    _active = True


def activate_from_env() -> None:
    """Entry point of the ``.pth`` file: activate if ``SANDBOXLOAD`` is true, else do nothing.

    A failure here must not leave the process running unprotected while the user believes it
    is protected (``site`` would print the error and carry on), so it ends the process.
    """
    if not is_true(os.environ.get(ACTIVATE_ENV)):
        return
    try:
        activate(export_env=False)
    except Exception as exc:  # fail closed: the user asked for protection
        sys.stderr.write(
            f"sandboxload: activation failed ({exc!r}); refusing to run "
            f"unprotected. Unset {ACTIVATE_ENV} to run without sandboxload.\n"
        )
        raise SystemExit(70) from exc


def run_sitecustomize(own_dir: str) -> None:
    """Entry point of ``site/sitecustomize.py``: run the ``sitecustomize`` it shadows, activate."""
    from importlib.machinery import PathFinder

    own = os.path.realpath(own_dir)
    rest = [p for p in sys.path if os.path.realpath(p or os.curdir) != own]
    spec = PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        from importlib.util import module_from_spec

        shadowed = module_from_spec(spec)
        spec.loader.exec_module(shadowed)
    activate(export_env=False)
