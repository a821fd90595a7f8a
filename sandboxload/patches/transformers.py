"""transformers: sharded indexes, ``transformers_weights``, and remote code.

Weight files themselves need nothing here: ``load_state_dict`` reaches the patched
``torch.load`` (pickle -> sandbox) and the patched ``safe_open`` (safetensors, validated).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import modelfolder, policy
from ..errors import RemoteCodeRefusedError, SandboxLoadError
from ._common import wrap


def _shards(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_checkpoint_shard_files(*args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(original).bind(*args, **kwargs)
        files, metadata = original(*args, **kwargs)
        modelfolder.check_shards(str(bound.arguments["index_filename"]), files)
        return files, metadata

    return get_checkpoint_shard_files


def _resolved(original: Callable[..., Any]) -> Callable[..., Any]:
    sig = inspect.signature(original)

    def _get_resolved_checkpoint_files(*args: Any, **kwargs: Any) -> Any:
        arguments = sig.bind(*args, **kwargs).arguments
        explicit = arguments.get("transformers_explicit_filename")
        base = arguments.get("pretrained_model_name_or_path")
        if explicit is not None and base is not None:
            modelfolder.check_explicit_weights(str(base), explicit)
        return original(*args, **kwargs)

    return _get_resolved_checkpoint_files


def _refuse_remote(original: Callable[..., Any], what: str) -> Callable[..., Any]:
    sig = inspect.signature(original)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        if policy.current().remote_code != "allow":
            arguments = sig.bind_partial(*args, **kwargs).arguments
            where = str(
                arguments.get("module_path")
                or arguments.get("pretrained_model_name_or_path")
                or "<unknown>"
            )
            target = arguments.get("class_name") or arguments.get("class_reference")
            raise RemoteCodeRefusedError(where, f"{what} {target!r}")
        return original(*args, **kwargs)

    return refuse


def _surface(original: Callable[..., Any]) -> Callable[..., Any]:
    """transformers 4.x re-raises any torch.load failure as a generic OSError ("Unable to
    load weights..."); give the caller sandboxload's typed error instead."""

    def load_state_dict(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except Exception as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, SandboxLoadError):
                cause = cause.__cause__ or cause.__context__
            if cause is None or cause is exc:
                raise
            raise cause from exc

    return load_state_dict


def patch_hub(module: ModuleType) -> None:
    wrap(module, "get_checkpoint_shard_files", _shards)


def patch_modeling(module: ModuleType) -> None:
    wrap(module, "get_checkpoint_shard_files", _shards)
    wrap(module, "_get_resolved_checkpoint_files", _resolved)
    wrap(module, "load_state_dict", _surface)


def patch_dynamic(module: ModuleType) -> None:
    wrap(
        module,
        "get_class_from_dynamic_module",
        lambda f: _refuse_remote(f, "it ships its own code, class"),
    )
    wrap(module, "get_class_in_module", lambda f: _refuse_remote(f, "it ships its own code, class"))
