"""sentence-transformers: which classes a model folder may make it import.

``modules.json`` types, a Dense ``activation_function``, a custom tokenizer class: each is a
dotted path from the model folder, imported (and often called) by
``import_from_string``. Only sentence-transformers' own classes and torch.nn modules are
accepted (:func:`sandboxload.remotecode.is_library_class`, the predicate ``scan`` uses too);
anything else is remote code, refused unless the policy allows it.
Weight files need nothing here: every module reads them through the patched ``torch.load``
and ``safetensors`` entry points.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import policy
from ..errors import RemoteCodeRefusedError
from ..refusals import refuse
from ..remotecode import is_library_class, is_library_object
from ._common import entry_point, wrap, wrap_method


def _model_folder() -> str:
    """The model being loaded, for the error message only: the nearest caller frame that
    holds a model path (sentence-transformers passes it down under these names)."""
    frame = sys._getframe(2)
    while frame is not None:
        for name in ("model_name_or_path", "model_path", "input_path", "path"):
            value = frame.f_locals.get(name)
            if isinstance(value, str) and os.path.isdir(value):
                return os.path.join(value, "modules.json") if name != "path" else value
        frame = frame.f_back  # type: ignore[assignment]
    return "<sentence-transformers model configuration>"


def _guard(original: Callable[..., Any]) -> Callable[..., Any]:
    def import_from_string(dotted_path: str) -> Any:
        if not is_library_class(dotted_path) and policy.current().remote_code != "allow":
            refuse(
                RemoteCodeRefusedError(
                    _model_folder(),
                    f"its configuration names {dotted_path!r}, which is neither a "
                    "sentence-transformers class nor a torch.nn module",
                )
            )
        result = original(dotted_path)
        if not is_library_object(dotted_path, result) and policy.current().remote_code != "allow":
            refuse(
                RemoteCodeRefusedError(
                    _model_folder(),
                    f"{dotted_path!r} is not a "
                    + ("torch.nn.Module " if dotted_path.startswith("torch.nn.") else "")
                    + "class",
                )
            )
        return result

    return import_from_string


def patch(module: ModuleType) -> None:
    """Hook for ``sentence_transformers.util`` (3.x) and ``...util.misc`` (6.x)."""
    wrap(module, "import_from_string", _guard)


# The model classes whose construction is a user-facing load (3.x and 6.x module names).
MODEL_CLASSES = {
    "sentence_transformers.SentenceTransformer": "SentenceTransformer",
    "sentence_transformers.sentence_transformer.model": "SentenceTransformer",
    "sentence_transformers.cross_encoder.CrossEncoder": "CrossEncoder",
    "sentence_transformers.cross_encoder.model": "CrossEncoder",
    "sentence_transformers.sparse_encoder.model": "SparseEncoder",
}


def patch_model_class(module: ModuleType) -> None:
    """Hook for each module of :data:`MODEL_CLASSES`: a refusal swallowed anywhere while the
    model is built is re-raised by its constructor."""
    cls = getattr(module, MODEL_CLASSES.get(module.__name__, ""), None)
    if isinstance(cls, type):
        wrap_method(cls, "__init__", entry_point)
