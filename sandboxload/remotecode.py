"""What in a model folder is code the model ships: the one statement of the rule.

The runtime gates (:mod:`sandboxload.patches.transformers_remote`,
:mod:`sandboxload.patches.sentence_transformers`) refuse these when a library reaches them;
``sandboxload scan`` reports them from the files alone, before anything loads:

- ``auto_map`` (and ``custom_pipelines``) in any config JSON: transformers maps a class to a
  module file of the model (``config.json``, ``tokenizer_config.json``,
  ``preprocessor_config.json``, ``processor_config.json`` ...);
- a sentence-transformers ``modules.json`` entry, or a Dense ``activation_function``, naming
  a class that is neither sentence-transformers' own nor a ``torch.nn`` module;
- a ``custom_generate/`` directory (transformers' custom generate functions);
- any ``*.py`` file: nothing in a folder of weights needs one but code that would run.
"""

from __future__ import annotations

from typing import Any

# Dotted names a model folder may make sentence-transformers import (its own classes and
# torch.nn modules); the runtime gate also checks that a torch.nn name is a Module class.
LIBRARY_CLASS_PREFIXES = ("sentence_transformers.", "torch.nn.")
CUSTOM_GENERATE_DIR = "custom_generate"
CUSTOM_GENERATE = f"{CUSTOM_GENERATE_DIR}/generate.py"
MODULES_JSON = "modules.json"
# Config keys through which transformers runs a model's own code.
CODE_KEYS = {
    "auto_map": "maps classes to code it ships",
    "custom_pipelines": "names a custom pipeline implemented by code it ships",
}


def is_library_class(dotted: object) -> bool:
    """A dotted name a model folder may name without shipping code."""
    return isinstance(dotted, str) and dotted.startswith(LIBRARY_CLASS_PREFIXES)


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
    activation = doc.get("activation_function")
    if isinstance(activation, str) and "." in activation and not is_library_class(activation):
        found.append(f"activation_function names {activation!r}, a class outside the library")
    return found


def _modules_findings(doc: Any) -> list[str]:
    entries = doc if isinstance(doc, list) else []
    return [
        f"modules.json entry {e.get('name', i)!r} has type {e.get('type')!r}, a custom module "
        "class (neither sentence-transformers' own nor torch.nn)"
        for i, e in enumerate(entries)
        if isinstance(e, dict) and not is_library_class(e.get("type"))
    ]


def _short(values: list[Any]) -> str:
    text = ", ".join(str(v) for v in values[:4])
    return text + (f" (+{len(values) - 4} more)" if len(values) > 4 else "")
