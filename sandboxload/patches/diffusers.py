"""diffusers: remote code refused before any file is copied or imported; typed weight errors.

A local folder makes diffusers import one of its ``.py`` files in these ways, all of which go
through ``diffusers.utils.dynamic_modules_utils.get_class_from_dynamic_module``:

- ``DiffusionPipeline.from_pretrained(dir, custom_pipeline=...)`` and ``from_pipe(pipe,
  custom_pipeline=...)``: a folder (its ``pipeline.py``), a ``.py`` file, a name of a file in
  the model folder, a hub repo or a community pipeline name (code fetched from the hub);
- ``model_index.json`` whose ``_class_name`` is ``[module, class]`` with ``module.py`` in the
  folder (the pipeline class itself), or whose component entry ``[module, class]`` names a
  ``module.py`` in the component's subfolder;
- ``AutoModel.from_pretrained`` with ``auto_map`` in the config; ``ModularPipelineBlocks`` /
  ``ModularPipeline.from_pretrained`` with ``auto_map`` in ``modular_config.json``.

Upstream copies the file into ``HF_MODULES_CACHE``, imports every module it names
(``check_imports``), then executes it. While the policy refuses remote code, every one of those
steps refuses (:class:`~sandboxload.errors.RemoteCodeRefusedError`, through
:func:`sandboxload.refusals.refuse`), whatever ``trust_remote_code`` says: the model folder's
code is the same input :mod:`sandboxload.remotecode` calls shipped code. diffusers' own
``resolve_trust_remote_code`` refuses too when a model that has code is trusted. With remote
code allowed (``SANDBOXLOAD_REMOTE_CODE=allow``) every function is upstream's own.

Weights need nothing here beyond the patched ``torch.load`` and safetensors, except that
diffusers' ``load_state_dict`` re-raises any failure as a generic ``OSError`` / ``ValueError``:
it is given the typed error back. The user-facing ``from_pretrained`` / ``from_pipe`` re-raise
a refusal that an ``except`` in between swallowed.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, NoReturn

from ..errors import RemoteCodeRefusedError
from ..refusals import refuse
from ._common import entry_point, wrap, wrap_method
from .transformers import shards_checked, surface
from .transformers_remote import arguments_of, code_refused, on_the_way_to_code


def _refuse_code(a: dict[str, Any]) -> NoReturn:
    repo = str(a.get("pretrained_model_name_or_path"))
    subfolder, module_file = a.get("subfolder"), a.get("module_file")
    where = f"{subfolder}/{module_file}" if subfolder else str(module_file)
    what = f"diffusers was asked to import its code, {where}"
    if a.get("class_name"):
        what += f" (class {a['class_name']!r})"
    refuse(RemoteCodeRefusedError(repo, what))


def _dynamic(original: Callable[..., Any]) -> Callable[..., Any]:
    """``get_class_from_dynamic_module`` / ``get_cached_module_file``: diffusers calls them
    only to run code (a local file, a hub repo's, a community pipeline's): refused."""
    arguments = arguments_of(original)

    def gate(*args: Any, **kwargs: Any) -> Any:
        if not code_refused():
            return original(*args, **kwargs)
        _refuse_code(arguments(*args, **kwargs))

    return gate


def _resolve(original: Callable[..., Any]) -> Callable[..., Any]:
    arguments = arguments_of(original)

    def resolve_trust_remote_code(*args: Any, **kwargs: Any) -> Any:
        a = arguments(*args, **kwargs)
        if a.get("has_remote_code") and a.get("trust_remote_code") and code_refused():
            refuse(
                RemoteCodeRefusedError(
                    str(a.get("model_name")), "it maps a class to code it ships (auto_map)"
                )
            )
        return original(*args, **kwargs)

    return resolve_trust_remote_code


def patch_dynamic(module: ModuleType) -> None:
    """Hook for ``diffusers.utils.dynamic_modules_utils``."""
    wrap(module, "resolve_trust_remote_code", _resolve)
    wrap(module, "get_class_from_dynamic_module", _dynamic)
    wrap(module, "get_cached_module_file", _dynamic)
    for name in ("check_imports", "get_relative_imports", "get_relative_import_files"):
        wrap(module, name, on_the_way_to_code(f"diffusers' {name}: a module file"))
    wrap(module, "get_class_in_module", on_the_way_to_code("diffusers' get_class_in_module"))


def patch_hub(module: ModuleType) -> None:
    """Hook for ``diffusers.utils.hub_utils``: a shard index's files inside its folder, and
    safetensors for a safetensors index (transformers' rule: an index of
    ``diffusion_pytorch_model.safetensors.index.json`` mapping to ``shard.bin`` had the pickle
    loaded where safetensors were asked for)."""
    wrap(module, "_get_checkpoint_shard_files", shards_checked)


def patch_model_loading(module: ModuleType) -> None:
    """Hook for ``diffusers.models.model_loading_utils``: the typed error out of
    ``load_state_dict``, not diffusers' generic one."""
    wrap(module, "load_state_dict", surface)


# User-facing entry points that re-raise a swallowed refusal: module -> (class, method).
ENTRY_POINTS = {
    "diffusers.pipelines.pipeline_utils": [
        ("DiffusionPipeline", "from_pretrained"),
        ("DiffusionPipeline", "from_pipe"),
    ],
    "diffusers.models.modeling_utils": [("ModelMixin", "from_pretrained")],
    "diffusers.models.auto_model": [("AutoModel", "from_pretrained")],
    "diffusers.modular_pipelines.modular_pipeline": [
        ("ModularPipelineBlocks", "from_pretrained"),
        ("ModularPipeline", "from_pretrained"),
        # Loads each component after from_pretrained returned, and logs a failure of any
        # (a refusal too) and goes on without it.
        ("ModularPipeline", "load_components"),
    ],
    "diffusers.modular_pipelines.modular_pipeline_utils": [("ComponentSpec", "load")],
}


def patch_entry_points(module: ModuleType) -> None:
    """Hook for each module of :data:`ENTRY_POINTS`."""
    for owner, name in ENTRY_POINTS.get(module.__name__, ()):
        cls = getattr(module, owner, None)
        if isinstance(cls, type):
            wrap_method(cls, name, entry_point)
