"""huggingface_hub under SANDBOXLOAD_OFFLINE: no download is attempted, and a file that is
not in the local cache is a clear :class:`OfflineError` rather than a network timeout."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import policy
from ..errors import OfflineError
from ._common import wrap

_MISSES = ("LocalEntryNotFoundError", "OfflineModeIsEnabled")


def patch_constants(module: ModuleType) -> None:
    """hub reads HF_HUB_OFFLINE once, into this module: set it here too (late activation)."""
    try:
        if policy.current().offline:
            module.HF_HUB_OFFLINE = True
    except policy.PolicyError:
        pass


def _offline(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not policy.current().offline:
                return original(*args, **kwargs)
            try:
                return original(*args, **kwargs)
            except Exception as exc:
                if not any(c.__name__ in _MISSES for c in type(exc).__mro__):
                    raise
                repo = kwargs.get("repo_id", args[0] if args else "?")
                name = kwargs.get("filename", args[1] if len(args) > 1 and what == "file" else "")
                target = f"{repo}/{name}" if name else str(repo)
                raise OfflineError(
                    target, f"{what} download refused: {type(exc).__name__}"
                ) from exc

        return guarded

    return make


def patch_download(module: ModuleType) -> None:
    wrap(module, "hf_hub_download", _offline("file"))


def patch_snapshot(module: ModuleType) -> None:
    wrap(module, "snapshot_download", _offline("snapshot"))
