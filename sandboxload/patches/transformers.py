"""transformers: sharded indexes, ``transformers_weights``, typed errors on 4.x.

Remote code is :mod:`transformers_remote`'s.

Weight files themselves need little here: ``load_state_dict`` reaches the patched
``torch.load`` (pickle -> sandbox) and the patched ``safe_open`` (safetensors, validated);
the module's own reads of whole shards are tracked, so their bytes keep their path.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import modelfolder, origins
from ..errors import SandboxLoadError
from ..refusals import note
from ._common import entry_point, is_patched, mark, wrap, wrap_method


def shards_checked(original: Callable[..., Any]) -> Callable[..., Any]:
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


def surface(original: Callable[..., Any]) -> Callable[..., Any]:
    """transformers 4.x (and diffusers) re-raise any torch.load failure as a generic OSError
    ("Unable to load weights..."); give the caller sandboxload's typed error instead, noted
    so the user's entry point re-raises it if a caller in between swallows it."""

    def load_state_dict(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except Exception as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, SandboxLoadError):
                cause = cause.__cause__ or cause.__context__
            if cause is None or cause is exc:
                raise
            note(cause)
            raise cause from exc

    return load_state_dict


def patch_hub(module: ModuleType) -> None:
    wrap(module, "get_checkpoint_shard_files", shards_checked)


def patch_modeling(module: ModuleType) -> None:
    # transformers 5 reads safetensors shards itself (``open(f, "rb").read()``) when
    # ``disable_mmap`` is set -- which a folder can ask for through sentence-transformers'
    # ``model_kwargs`` -- or on hf-mount paths, and hands the bytes to
    # ``safetensors.torch.load``: its ``open`` remembers which file the bytes came from.
    if not is_patched(vars(module).get("open")):
        module.open = mark(origins.tracked_open)
    wrap(module, "get_checkpoint_shard_files", shards_checked)
    wrap(module, "_get_resolved_checkpoint_files", _resolved)
    wrap(module, "load_state_dict", surface)
    if isinstance(getattr(module, "PreTrainedModel", None), type):
        wrap_method(module.PreTrainedModel, "from_pretrained", entry_point)
