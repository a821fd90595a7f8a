"""transformers' remote code: refused before any file of the model is copied or imported.

``trust_remote_code=True`` (infinity passes it by default) lets a model folder run its own
Python: ``auto_map`` in a config, tokenizer, processor, feature-extractor or image-processor
config; ``custom_generate/generate.py``; custom pipelines. Upstream first copies the files
into ``HF_MODULES_CACHE`` (following relative imports, ``..`` and symlinks included) and
imports every module they name (``check_imports``), and only then runs the class. While the
policy refuses remote code, every one of those steps is a gate, and the first one reached
refuses:

- ``resolve_trust_remote_code``: the library's own question "may this model run its code?";
- ``get_class_from_dynamic_module``, ``get_cached_module_file``,
  ``GenerationMixin.load_custom_generate``: refused when the model has the code file; when it
  has none they raise ``OSError`` as upstream does (so "no custom code here" stays the same);
- ``check_imports``, ``get_relative_imports``, ``get_relative_import_files``,
  ``get_class_in_module``: only ever called on the way to running code: always refused.

Each refusal goes through :func:`sandboxload.refusals.refuse`, and the user-facing entry points
(``from_pretrained`` of every Auto class and of ``PreTrainedModel``, ``pipeline``) re-raise it
if an ``except`` clause in between swallowed it. With remote code allowed, every function is
upstream's own.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, NoReturn

from .. import policy
from ..errors import RemoteCodeRefusedError
from ..refusals import refuse
from ..remotecode import CUSTOM_GENERATE
from ._common import entry_point, wrap, wrap_method

_HUB_ARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only")


def code_refused() -> bool:
    return policy.current().remote_code != "allow"


def _code_file(repo: str, module_file: str, options: dict[str, Any]) -> str | None:
    """Where ``module_file`` of the model ``repo`` is, or None if it has none. A local folder
    is looked at directly (``lexists``: a dangling symlink is still code the folder names);
    a hub repo goes through transformers' own ``cached_file``, which fetches a file into the
    hub cache at most -- it never copies into the modules cache nor imports."""
    if os.path.isdir(repo):
        path = os.path.join(repo, module_file)
        return path if os.path.lexists(path) else None
    from transformers.utils.hub import cached_file

    kwargs = {k: options[k] for k in _HUB_ARGS if options.get(k) is not None}
    try:
        found = cached_file(
            repo,
            module_file,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **kwargs,
        )
    except Exception:  # not a repo, no access: it has no code we could run
        return None
    return str(found) if found else None


def _refuse_shipped(
    repo: str, module_file: str, options: dict[str, Any], what: str, missing: str | None = None
) -> NoReturn:
    """Refused if the model ships ``module_file``; if it has none, the ``OSError`` upstream
    raises there, which its callers read as "no custom code here"."""
    if _code_file(repo, module_file, options) is None:
        raise OSError(missing or f"{repo} does not appear to have a file named {module_file}")
    refuse(RemoteCodeRefusedError(repo, what))


def arguments_of(original: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    sig = inspect.signature(original)
    return lambda *args, **kwargs: dict(sig.bind_partial(*args, **kwargs).arguments)


def _resolve(original: Callable[..., Any]) -> Callable[..., Any]:
    arguments = arguments_of(original)

    def resolve_trust_remote_code(*args: Any, **kwargs: Any) -> Any:
        a = arguments(*args, **kwargs)
        trust, has_local, has_remote = (
            a.get("trust_remote_code"),
            a.get("has_local_code"),
            a.get("has_remote_code"),
        )
        # Refused before upstream may prompt: trusting, or undecided with no local class.
        if has_remote and code_refused() and (trust or (trust is None and not has_local)):
            refuse(
                RemoteCodeRefusedError(
                    str(a.get("model_name")),
                    "it maps a class to code it ships (auto_map, custom_generate or a custom "
                    "pipeline)",
                )
            )
        return original(*args, **kwargs)

    return resolve_trust_remote_code


def _class_from_dynamic_module(original: Callable[..., Any]) -> Callable[..., Any]:
    arguments = arguments_of(original)

    def get_class_from_dynamic_module(*args: Any, **kwargs: Any) -> Any:
        if not code_refused():
            return original(*args, **kwargs)
        a = arguments(*args, **kwargs)
        reference = str(a.get("class_reference"))
        repo = str(a.get("pretrained_model_name_or_path"))
        # Parsed as upstream parses it, with upstream's ValueError for a malformed reference.
        if "--" in reference:
            repo, reference = reference.split("--")
        module, _class_name = reference.split(".")
        _refuse_shipped(repo, module + ".py", a, f"it ships its own code, class {reference!r}")

    return get_class_from_dynamic_module


def _cached_module_file(original: Callable[..., Any]) -> Callable[..., Any]:
    arguments = arguments_of(original)

    def get_cached_module_file(*args: Any, **kwargs: Any) -> Any:
        if not code_refused():
            return original(*args, **kwargs)
        a = arguments(*args, **kwargs)
        repo, module_file = str(a.get("pretrained_model_name_or_path")), str(a.get("module_file"))
        _refuse_shipped(repo, module_file, a, f"it ships its own code, {module_file}")

    return get_cached_module_file


def on_the_way_to_code(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def gate(*args: Any, **kwargs: Any) -> Any:
            if code_refused():
                values = [
                    str(x) for x in (*args, *kwargs.values()) if isinstance(x, str | os.PathLike)
                ]
                paths = [v for v in values if v.endswith(".py") or os.sep in v]
                where = (paths or values or ["?"])[0]
                refuse(RemoteCodeRefusedError(where, f"{what} was asked for its code"))
            return original(*args, **kwargs)

        return gate

    return make


def _custom_generate(original: Callable[..., Any]) -> Callable[..., Any]:
    arguments = arguments_of(original)

    def load_custom_generate(*args: Any, **kwargs: Any) -> Any:
        if not code_refused():
            return original(*args, **kwargs)
        a = arguments(*args, **kwargs)
        repo = str(a.get("pretrained_model_name_or_path"))
        _refuse_shipped(
            repo,
            CUSTOM_GENERATE,
            a.get("kwargs") or {},
            f"it ships its own generate function, {CUSTOM_GENERATE}",
            missing=f"`{repo}` does not contain a `custom_generate` subdirectory",
        )

    return load_custom_generate


def patch_dynamic(module: ModuleType) -> None:
    """Hook for ``transformers.dynamic_module_utils``."""
    wrap(module, "resolve_trust_remote_code", _resolve)
    wrap(module, "get_class_from_dynamic_module", _class_from_dynamic_module)
    wrap(module, "get_cached_module_file", _cached_module_file)
    for name in ("check_imports", "get_relative_imports", "get_relative_import_files"):
        wrap(module, name, on_the_way_to_code(f"{name}: a module file"))
    wrap(module, "get_class_in_module", on_the_way_to_code("get_class_in_module: a class"))


def patch_generation(module: ModuleType) -> None:
    """Hook for ``transformers.generation.utils``: ``custom_generate/``."""
    mixin = getattr(module, "GenerationMixin", None)
    if mixin is not None:
        wrap_method(mixin, "load_custom_generate", _custom_generate)


# User-facing entry points that re-raise a swallowed refusal: (module, class or None, name).
ENTRY_POINTS = {
    "transformers.models.auto.auto_factory": [
        ("_BaseAutoModelClass", "from_pretrained"),
        ("_BaseAutoModelClass", "from_config"),
    ],
    "transformers.models.auto.configuration_auto": [("AutoConfig", "from_pretrained")],
    "transformers.models.auto.tokenization_auto": [("AutoTokenizer", "from_pretrained")],
    "transformers.models.auto.processing_auto": [("AutoProcessor", "from_pretrained")],
    "transformers.models.auto.image_processing_auto": [("AutoImageProcessor", "from_pretrained")],
    "transformers.models.auto.feature_extraction_auto": [
        ("AutoFeatureExtractor", "from_pretrained")
    ],
    "transformers.models.auto.video_processing_auto": [("AutoVideoProcessor", "from_pretrained")],
    "transformers.pipelines": [(None, "pipeline")],
}


def patch_entry_points(module: ModuleType) -> None:
    """Hook for each module of :data:`ENTRY_POINTS`."""
    for owner, name in ENTRY_POINTS.get(module.__name__, ()):
        if owner is None:
            wrap(module, name, entry_point)
        elif isinstance(getattr(module, owner, None), type):
            wrap_method(getattr(module, owner), name, entry_point)
