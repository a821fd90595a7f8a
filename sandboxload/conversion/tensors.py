"""What of a checkpoint safetensors can hold: a flat map of names to plain dense tensors.

Shared tensors follow safetensors' own conversion (``convert.py``, ``save_model``): of names
that view exactly the same bytes (tied weights), one is written and each other name is
recorded in the metadata as ``removed name -> kept name``. The kept name is the first in the
checkpoint's order, which is ``state_dict()`` order: the module that owns a tied weight (an
input embedding) is registered before the head that reuses it, and it is the name the
loaders tie *from*. Tensors that share a storage without being the same view (slices of one
buffer) are written as separate copies: every name keeps its exact values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch

from ..errors import ConversionError
from ..wording import a, count

FORMAT_METADATA = {"format": "pt"}  # what transformers checks before loading a safetensors file


@dataclass
class Prepared:
    """The tensors to write (in order), the metadata, and what was left out."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)  # removed name -> kept name
    dropped: list[str] = field(default_factory=list)  # "name (what)" left out on request


@cache
def _writable(dtype: torch.dtype) -> bool:
    import safetensors.torch

    try:
        safetensors.torch.save({"x": torch.empty(0, dtype=dtype)})
    except Exception:  # safetensors has no code for it: the message names the dtype
        return False
    return True


def _what(value: Any) -> str:
    """A short description of a value safetensors cannot hold."""
    if isinstance(value, torch.Tensor):
        if value.is_quantized:
            return f"a quantized tensor ({value.dtype})"
        if value.layout != torch.strided:
            return a(f"{value.layout} tensor")
        if value.is_nested:
            return "a nested tensor"
        if value.device.type == "meta":
            return "a tensor without data (meta)"
        return f"{a(str(value.dtype))} tensor, a dtype safetensors cannot store"
    if isinstance(value, Mapping):
        return f"{a(type(value).__name__)} of {count(len(value), 'entry', 'entries')}"
    if isinstance(value, (list, tuple)):
        return f"{a(type(value).__name__)} of {count(len(value), 'item')}"
    return a(type(value).__name__)


def _plain(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and not value.is_quantized
        and not value.is_nested
        and value.layout == torch.strided
        and value.device.type != "meta"
        and _writable(value.dtype)
    )


def _holds_tensors(value: Any) -> bool:
    return isinstance(value, Mapping) and any(isinstance(v, torch.Tensor) for v in value.values())


def select(obj: Any, file: str, key: str | None, drop_non_tensors: bool) -> Prepared:
    """The name -> tensor map in ``obj`` (or in ``obj[key]``); anything else is refused,
    naming it, unless ``drop_non_tensors``."""
    where = file
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise ConversionError(file, f"it has no top-level entry {key!r}", "Check --key.")
        obj, where = obj[key], f"{file}[{key!r}]"
    if not isinstance(obj, Mapping):
        raise ConversionError(
            file,
            f"it holds {_what(obj)}, not a mapping of names to tensors",
            "safetensors stores a flat name -> tensor map; save one (model.state_dict()).",
        )
    tensors: dict[str, torch.Tensor] = {}
    dropped, bad = [], []
    for name, value in obj.items():
        if isinstance(name, str) and _plain(value):
            tensors[name] = value
            continue
        label = f"{name!r} ({_what(value) if isinstance(name, str) else 'a non-string name'})"
        (dropped if drop_non_tensors else bad).append(label)
        if not drop_non_tensors and _holds_tensors(value) and key is None:
            raise ConversionError(
                file,
                f"entry {name!r} is {_what(value)} holding tensors",
                f"Convert that mapping with --key {name}, or leave the other entries out "
                "with --drop-non-tensors.",
            )
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ConversionError(
            file,
            f"{where} holds what safetensors cannot store: {shown}",
            "Leave those entries out with --drop-non-tensors (they are not written), or keep "
            "this checkpoint as it is and load it through the sandbox.",
        )
    return _deduplicate(tensors, dropped)


def _view(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.dtype, tuple(t.shape), tuple(t.stride()), t.storage_offset())


def _deduplicate(tensors: dict[str, torch.Tensor], dropped: list[str]) -> Prepared:
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_storage: dict[int, list[str]] = {}
    for name, t in tensors.items():
        storage = t.untyped_storage()
        ptr = storage.data_ptr() if storage.nbytes() else 0
        group = by_storage.setdefault(ptr, []) if ptr else []
        same = next((k for k in group if _view(tensors[k]) == _view(t)), None)
        if same is not None and name not in FORMAT_METADATA:  # "format" stays "pt"
            aliases[name] = same
            continue
        # A second, different view of one storage gets bytes of its own: safetensors
        # stores no sharing, and a name dropped for a partial view would lose its values.
        out[name] = t.clone(memory_format=torch.contiguous_format) if group else t.contiguous()
        group.append(name)
    return Prepared(out, {**FORMAT_METADATA, **aliases}, aliases, dropped)
