"""A scan as a SARIF 2.1.0 log, for code-scanning UIs (GitHub, GitLab, Azure DevOps).

One run; the driver lists every rule a row can carry; each row that is not a plain pass is a
result (passes are counted in the run's properties, not listed: a UI shows results as
alerts), located at its file and, for a cache blob, every other snapshot path that links it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .. import __version__
from .check import (
    CACHE_INTEGRITY,
    ERROR,
    LOADING_REDIRECT,
    OK,
    REFUSED,
    REMOTE_CODE,
    UNREADABLE,
    UNSAFE,
    WEIGHTS_OK,
    WEIGHTS_REFUSED,
    WEIGHTS_UNSAFE,
    Row,
)
from .report import utf8

SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
RULES: dict[str, tuple[str, str]] = {  # id -> (name, what it means)
    WEIGHTS_OK: ("WeightsLoadSafely", "A weight file that loads under the policy without code"),
    WEIGHTS_REFUSED: (
        "WeightsRefused",
        "A weight file the policy or a check refuses: a pickle naming a global outside the "
        "allowlist, a format not allowed, a hash pin that does not match, a malformed file",
    ),
    WEIGHTS_UNSAFE: (
        "WeightsUnsafeInProcess",
        "pickle=allow would unpickle this file in-process, and it is not plain data",
    ),
    REMOTE_CODE: (
        "RemoteCode",
        "The model ships code a library would run: auto_map, a custom sentence-transformers "
        "module or class (modules.json, an Asym/Router types map, an activation, a tokenizer "
        "class), custom_generate/, a Python file, trust_remote_code in loader arguments",
    ),
    LOADING_REDIRECT: (
        "LoadingRedirect",
        "A file that redirects loading out of the model or off its safe path: a link leaving "
        "the folder scanned, an index naming a file outside its folder (or not safetensors "
        "for a safetensors index), loader arguments such as weights_only=false, gguf_file, "
        "from_tf/from_flax or a subfolder outside, a modules.json path or a tokenizer or "
        "PEFT base model path outside the folder",
    ),
    CACHE_INTEGRITY: (
        "CacheIntegrity",
        "A Hugging Face cache blob whose content is not its name (SHA-256 or git blob id), "
        "or a snapshot entry that does not link into its repository's blobs/",
    ),
    UNREADABLE: ("Unreadable", "A file that could not be read or parsed, so it was not checked"),
}
_LEVEL = {OK: "note", REFUSED: "error", UNSAFE: "error", ERROR: "error"}


def log(rows: list[Row], summary: str) -> dict[str, Any]:
    ids = list(RULES)
    results = [_result(r, ids) for r in rows if r.rule != WEIGHTS_OK]
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "sandboxload",
                        "version": __version__,
                        "rules": [_rule(i) for i in ids],
                    }
                },
                "invocations": [{"executionSuccessful": True}],
                "results": results,
                "properties": {"summary": summary},
            }
        ],
    }


def _rule(rule_id: str) -> dict[str, Any]:
    name, text = RULES[rule_id]
    level = "note" if rule_id == WEIGHTS_OK else "error"
    return {
        "id": rule_id,
        "name": name,
        "shortDescription": {"text": text},
        "defaultConfiguration": {"level": level},
    }


def _result(row: Row, ids: list[str]) -> dict[str, Any]:
    return {
        "ruleId": row.rule,
        "ruleIndex": ids.index(row.rule),
        "level": _LEVEL[row.verdict],
        "message": {"text": utf8(f"{row.verdict}: {row.detail}")},
        "locations": [_location(p) for p in [row.file, *row.also]],
        "properties": utf8({"verdict": row.verdict, "format": row.format, "route": row.route}),
    }


def _location(path: str) -> dict[str, Any]:
    """A path as a URI of the bytes of its name (``README%FF.md``: a name need not be UTF-8)."""
    uri = Path(path).as_uri() if os.path.isabs(path) else quote(os.fsencode(Path(path).as_posix()))
    return {"physicalLocation": {"artifactLocation": {"uri": uri}}}
