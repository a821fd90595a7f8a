"""What in a model folder is code the model ships: the one statement of the rule.

The runtime gates (:mod:`sandboxload.patches.transformers_remote`,
:mod:`sandboxload.patches.sentence_transformers`, and :mod:`sandboxload.patches.diffusers`,
for which every dynamic module is a ``*.py`` file below) refuse these when a library reaches them;
``sandboxload scan`` reports them from the files alone, before anything loads:

- ``auto_map`` (and ``custom_pipelines``) in any config JSON: transformers maps a class to a
  module file of the model (``config.json``, ``tokenizer_config.json``,
  ``preprocessor_config.json``, ``processor_config.json`` ...);
- a dotted class name sentence-transformers imports from a config (``import_from_string``)
  that is neither one of its own classes nor a ``torch.nn`` module (:func:`is_library_class`):
  a ``modules.json`` entry's ``type``; an Asym (3.x ``<module>/config.json``) or Router (6.x
  ``router_config.json``) ``types`` map, whose classes get ``.load(path)`` called; a Dense
  ``activation_function``; a WordEmbeddings ``tokenizer_class``; a CrossEncoder's activation
  in ``config.json`` (3.x ``sbert_ce_default_activation_function``, 6.x
  ``sentence_transformers.activation_fn``), which is called;
- a ``custom_generate/`` directory (transformers' custom generate functions);
- any ``*.py`` file: nothing in a folder of weights needs one but code that would run.

And what in a config makes a library load from outside the model folder
(:func:`redirect_findings`, rule ``loading-redirect`` in ``scan``, whatever the remote-code
policy): a ``modules.json`` entry's ``path`` or a ``types`` key (joined to the folder by
sentence-transformers) that is absolute or climbs out; a ``tokenizer_name_or_path`` in a
sentence-transformers module config, or an ``adapter_config.json``'s
``base_model_name_or_path`` (peft, and transformers with peft installed, load the base model
from it), that is a local path rather than a Hub repo id -- both libraries follow it, found by
loading such folders (sentence-transformers 3.4 and 6.2, transformers 5 with peft 0.21).
"""

from __future__ import annotations

import os
import re
from typing import Any

# Dotted names a model folder may make sentence-transformers import: its own classes and
# torch.nn modules, as a plain path of public names ending in a class name (CapWords), so an
# attribute chain to a module or a function (``torch.nn.modules.module.torch``, whose
# ``.load(path)`` is ``torch.load``) is not one. The runtime gate also checks what the import
# gave (:func:`is_library_object`).
LIBRARY_CLASS_PREFIXES = ("sentence_transformers.", "torch.nn.")
_LIBRARY_CLASS = re.compile(
    r"(?:sentence_transformers|torch\.nn)(?:\.[A-Za-z][A-Za-z0-9_]*)*\.[A-Z][A-Za-z0-9_]*"
)
CUSTOM_GENERATE_DIR = "custom_generate"
CUSTOM_GENERATE = f"{CUSTOM_GENERATE_DIR}/generate.py"
MODULES_JSON = "modules.json"
WORD_EMBEDDINGS_CONFIG = "wordembedding_config.json"
CE_ACTIVATION_3 = "sbert_ce_default_activation_function"  # CrossEncoder 3.x, in config.json
ADAPTER_CONFIG = "adapter_config.json"  # peft: the base model is loaded from a path it names
# Config keys through which transformers runs a model's own code.
CODE_KEYS = {
    "auto_map": "maps classes to code it ships",
    "custom_pipelines": "names a custom pipeline implemented by code it ships",
}


def is_library_class(dotted: object) -> bool:
    """A dotted name a model folder may name without shipping code (the one predicate: the
    runtime gate on ``import_from_string`` and ``scan`` both ask it)."""
    return isinstance(dotted, str) and _LIBRARY_CLASS.fullmatch(dotted) is not None


def is_library_object(dotted: str, obj: object) -> bool:
    """After the import: a ``torch.nn`` name must be a ``torch.nn.Module`` class, and any name
    a class."""
    if not isinstance(obj, type):
        return False
    if dotted.startswith("torch.nn."):
        import torch

        return issubclass(obj, torch.nn.Module)
    return True


def is_config(name: str) -> bool:
    """A JSON file a library reads as configuration (``config.json``, ``*_config.json``,
    ``config_sentence_transformers.json``, ``modules.json`` ...)."""
    return name.endswith(".json") and ("config" in name or name == MODULES_JSON)


def is_code(name: str) -> bool:
    return name.endswith(".py")


def config_findings(name: str, doc: Any) -> list[str]:
    """What a parsed config file (base name ``name``) makes a library run, one line each."""
    if name == MODULES_JSON:
        return _modules_findings(doc)
    if not isinstance(doc, dict):
        return []
    found = []
    for key, what in CODE_KEYS.items():
        value = doc.get(key)
        if value:
            names = sorted(map(str, value.values())) if isinstance(value, dict) else [value]
            found.append(f"{key} {what}: {_short(names)}")
    types = doc.get("types")
    if isinstance(types, dict):  # Asym / Router: import_from_string(T).load(<module>/<key>)
        found += [
            f"types entry {key!r} names {value!r}, a module class outside the library "
            "(sentence-transformers calls its .load on the module's folder)"
            for key, value in types.items()
            if not is_library_class(value)
        ]
    for key, value, always in _named_classes(name, doc):
        if isinstance(value, str) and (always or "." in value) and not is_library_class(value):
            found.append(f"{key} names {value!r}, a class outside the library")
    return found


def _named_classes(name: str, doc: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    """(key, value, flagged even without a dot) of each single class name in ``doc``. A name
    without a dot is a library's own (GPT-2's ``activation_function: gelu_new``, a
    tokenizer_config's ``tokenizer_class``), except where only sentence-transformers reads it."""
    st = doc.get("sentence_transformers")
    return [
        ("activation_function", doc.get("activation_function"), False),
        ("tokenizer_class", doc.get("tokenizer_class"), name == WORD_EMBEDDINGS_CONFIG),
        (CE_ACTIVATION_3, doc.get(CE_ACTIVATION_3), True),
        (
            "sentence_transformers.activation_fn",
            st.get("activation_fn") if isinstance(st, dict) else None,
            True,
        ),
    ]


def _modules_findings(doc: Any) -> list[str]:
    entries = doc if isinstance(doc, list) else []
    return [
        f"modules.json entry {e.get('name', i)!r} has type {e.get('type')!r}, a custom module "
        "class (neither sentence-transformers' own nor torch.nn)"
        for i, e in enumerate(entries)
        if isinstance(e, dict) and not is_library_class(e.get("type"))
    ]


def redirect_findings(name: str, doc: Any) -> list[str]:
    """What in a parsed config (base name ``name``) makes a library load from outside the
    model folder, one line each."""
    found = []
    if name == MODULES_JSON:
        for i, e in enumerate(doc if isinstance(doc, list) else []):
            path = e.get("path") if isinstance(e, dict) else None
            if isinstance(path, str) and leaves_folder(path):
                found.append(
                    f"modules.json entry {e.get('name', i)!r} has path {path!r}, outside the "
                    "model folder (sentence-transformers loads that folder's module and code)"
                )
        return found
    if not isinstance(doc, dict):
        return found
    types = doc.get("types")
    if isinstance(types, dict):  # Asym / Router: each key is a module folder, joined
        found += [
            f"types key {key!r} is a module folder outside the model folder"
            for key in types
            if isinstance(key, str) and leaves_folder(key)
        ]
    for key, what in _path_refs(name):
        value = doc.get(key)
        if isinstance(value, str) and is_local_path(value):
            found.append(f"{key} {value!r} is a local path, not a Hub repo id ({what})")
    return found


def _path_refs(name: str) -> list[tuple[str, str]]:
    """(key, who follows it) of the model references a config named ``name`` holds that a
    library loads as a local path when they are one."""
    if name == ADAPTER_CONFIG:
        return [("base_model_name_or_path", "peft loads the base model from it")]
    if name.startswith("sentence_"):  # sentence_bert_config.json and the older names
        return [("tokenizer_name_or_path", "sentence-transformers loads the tokenizer from it")]
    return []


def leaves_folder(path: str) -> bool:
    """A path joined to the model folder that is absolute or climbs out of it."""
    norm = os.path.normpath(path)
    return os.path.isabs(norm) or norm == os.pardir or norm.startswith(os.pardir + os.sep)


def is_local_path(ref: str) -> bool:
    """A model reference that is not shaped like a Hub repo id (``name`` or ``org/name``),
    so a library resolves it as a local path (absolute, ``../x``, ``./x``, ``a/b/c``)."""
    parts = ref.split("/")
    return os.path.isabs(ref) or len(parts) > 2 or any(p in ("", ".", "..") for p in parts)


def _short(values: list[Any]) -> str:
    text = ", ".join(str(v) for v in values[:4])
    return text + (f" (+{len(values) - 4} more)" if len(values) > 4 else "")
