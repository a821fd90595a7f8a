"""Activation, and the post-import hooks it installs: everything on the start-up path.

The ``.pth`` file, ``site/sitecustomize.py``, the CLI and :func:`sandboxload.activate` all
call :func:`activate`, which is idempotent (a site dir can be processed twice).

This is the only module (with the package ``__init__``) that ``SANDBOXLOAD=1`` loads into
every interpreter of the environment, so it imports nothing beyond ``os`` and ``sys``: each
extra module measured about 0.1 ms of a 9 ms ``python -c pass``, which is why the post-import
finder lives here rather than in a module of its own.

Post-import hooks: one finder sits first on ``sys.meta_path``. For every import it does a
single dict lookup; only for a watched name does it ask the other finders for the spec and
wrap the loader so the hook runs right after ``exec_module``. A module that is already
imported is hooked at once. Hooks are named ``"package.module:function"`` and imported only
when they fire, so torch, the policy and the patches load only with their target library.
"""

import os
import sys

TYPE_CHECKING = False  # not imported from typing: see above
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

ACTIVATE_ENV = "SANDBOXLOAD"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})

# Library module -> the patch applied right after it is imported.
PATCHES = {
    "torch": "sandboxload.patches.torch:patch",
    "safetensors": "sandboxload.patches.safetensors:patch",
    "safetensors.torch": "sandboxload.patches.safetensors:patch_torch",
    "numpy": "sandboxload.patches.numpy:patch",
    "numpy.lib.format": "sandboxload.patches.numpy:patch_format",
    "torch.distributed.checkpoint.filesystem": "sandboxload.patches.dcp:patch_filesystem",
    "torch.distributed.checkpoint.state_dict_loader": "sandboxload.patches.dcp:patch_loader",
    "torch.distributed.checkpoint.format_utils": "sandboxload.patches.dcp:patch_format_utils",
    "transformers.utils.hub": "sandboxload.patches.transformers:patch_hub",
    "transformers.modeling_utils": "sandboxload.patches.transformers:patch_modeling",
    "transformers.dynamic_module_utils": "sandboxload.patches.transformers_remote:patch_dynamic",
    "transformers.generation.utils": "sandboxload.patches.transformers_remote:patch_generation",
    **dict.fromkeys(
        (
            "transformers.models.auto.auto_factory",
            "transformers.models.auto.configuration_auto",
            "transformers.models.auto.tokenization_auto",
            "transformers.models.auto.processing_auto",
            "transformers.models.auto.image_processing_auto",
            "transformers.models.auto.feature_extraction_auto",
            "transformers.models.auto.video_processing_auto",
            "transformers.pipelines",
        ),
        "sandboxload.patches.transformers_remote:patch_entry_points",
    ),
    "sentence_transformers.util": "sandboxload.patches.sentence_transformers:patch",
    "sentence_transformers.util.misc": "sandboxload.patches.sentence_transformers:patch",
    **dict.fromkeys(
        (
            "sentence_transformers.SentenceTransformer",
            "sentence_transformers.sentence_transformer.model",
            "sentence_transformers.cross_encoder.CrossEncoder",
            "sentence_transformers.cross_encoder.model",
            "sentence_transformers.sparse_encoder.model",
        ),
        "sandboxload.patches.sentence_transformers:patch_model_class",
    ),
    "diffusers.utils.dynamic_modules_utils": "sandboxload.patches.diffusers:patch_dynamic",
    "diffusers.models.model_loading_utils": "sandboxload.patches.diffusers:patch_model_loading",
    "diffusers.utils.hub_utils": "sandboxload.patches.diffusers:patch_hub",
    **dict.fromkeys(
        (
            "diffusers.pipelines.pipeline_utils",
            "diffusers.models.modeling_utils",
            "diffusers.models.auto_model",
            "diffusers.modular_pipelines.modular_pipeline",
            "diffusers.modular_pipelines.modular_pipeline_utils",
        ),
        "sandboxload.patches.diffusers:patch_entry_points",
    ),
    "huggingface_hub.constants": "sandboxload.patches.hub:patch_constants",
    "huggingface_hub.file_download": "sandboxload.patches.hub:patch_download",
    "huggingface_hub._snapshot_download": "sandboxload.patches.hub:patch_snapshot",
}
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")

_active = False


def is_true(value: str | None) -> bool:
    """The activation flag's words: ``1/true/yes/on``, any case (the same words as every
    switch of :mod:`policy`, which this start-up module does not import; a test keeps them
    equal)."""
    return value is not None and value.strip().lower() in TRUE_WORDS


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
    if "SANDBOXLOAD_OFFLINE" in os.environ or os.environ.get("SANDBOXLOAD_POLICY"):
        _offline_env()  # only then is the policy worth resolving at start-up
    for name, target in PATCHES.items():
        register(name, target)
    _active = True


def _offline_env() -> None:
    """SANDBOXLOAD_OFFLINE: the Hugging Face offline switches, set before those libraries
    read them (they read them once, at import)."""
    from .policy import PolicyError, current

    try:
        offline = current().offline
    except PolicyError:
        return  # the first load reports the bad setting and fails
    if offline:
        for name in OFFLINE_ENV:
            os.environ[name] = "1"


def _activate_or_exit(why: str) -> None:
    """Activate; a failure ends the process rather than leave it running unprotected while
    the user believes it is protected (``site`` would print the error and carry on)."""
    try:
        activate(export_env=False)
    except Exception as exc:  # fail closed: the user asked for protection
        sys.stderr.write(
            f"sandboxload: activation failed ({exc!r}); refusing to run unprotected. {why}\n"
        )
        raise SystemExit(70) from exc


def activate_from_env() -> None:
    """Entry point of the ``.pth`` file: activate if ``SANDBOXLOAD`` is true, else do nothing."""
    if is_true(os.environ.get(ACTIVATE_ENV)):
        _activate_or_exit(f"Unset {ACTIVATE_ENV} to run without sandboxload.")


def run_sitecustomize(own_dir: str) -> None:
    """Entry point of ``site/sitecustomize.py``: run the ``sitecustomize`` it shadows, then
    activate -- also when that file raises (``site`` prints its error and carries on, so an
    activation after it would be skipped and the process run unprotected); its error is
    raised again once sandboxload is active."""
    from importlib.machinery import PathFinder

    own = os.path.realpath(own_dir)
    rest = [p for p in sys.path if os.path.realpath(p or os.curdir) != own]
    spec = PathFinder.find_spec("sitecustomize", rest)
    try:
        if spec is not None and spec.loader is not None:
            from importlib.util import module_from_spec

            shadowed = module_from_spec(spec)
            spec.loader.exec_module(shadowed)
    finally:
        _activate_or_exit(f"Drop {own_dir} from PYTHONPATH to run without sandboxload.")


# --- post-import hooks ---

_hooks: dict[str, list[str]] = {}


def _call(target: str, module: "ModuleType") -> None:
    mod_name, _, func = target.partition(":")
    __import__(mod_name)
    getattr(sys.modules[mod_name], func)(module)


class _HookedLoader:
    """Stands in for the real loader during one import, then gets out of the way."""

    def __init__(self, loader: "Any", name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: "ModuleSpec") -> "ModuleType | None":
        return self._loader.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        # Put the real loader back first, so the module body and later reloads see only it.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        for target in _hooks.get(self._name, ()):
            _call(target, module)

    def __getattr__(self, attr: str) -> "Any":
        return getattr(self._loader, attr)


class _PostImportFinder:
    """The meta-path finder that notices watched imports."""

    def find_spec(
        self,
        fullname: str,
        path: "Sequence[str] | None",
        target: "ModuleType | None" = None,
    ) -> "ModuleSpec | None":
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
