"""What of a checkpoint safetensors can hold: a flat map of names to plain dense tensors.

Shared tensors: safetensors stores no sharing, so every name is written with bytes of its own
-- tied weights too. safetensors' own conversion instead writes one name of a tied group and
records the others in the metadata, choosing by the model class's ``_tied_weights_keys``;
without that class (resolving it would mean importing what the folder's config names) the
choice would be the file's: an attack review showed a checkpoint listing a head before its
embedding making the converted model load a *random* embedding. Loaders tie the copies back
as they tie the pickle's names, to the same model (tested on both stacks).

The copies cost what they copy, so the total is bounded by the checkpoint's size: a file
cannot turn a stride-0 view of one element (``expand``) or many views of one buffer into
gigabytes of output.
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


def output_bound(file_size: int) -> int:
    """The most bytes the tensors of a ``file_size``-byte checkpoint may take once written:
    tied weights written out several times fit, amplification by views does not."""
    return 4 * file_size + (64 << 20)


def select(
    obj: Any, file: str, file_size: int, key: str | None, drop_non_tensors: bool
) -> Prepared:
    """The name -> tensor map in ``obj`` (or in ``obj[key]``); anything else is refused,
    naming it, unless ``drop_non_tensors`` (and nothing that holds tensors is ever dropped)."""
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
        if _holds_tensors(value):  # weights: never left out, whatever the flags
            raise ConversionError(
                file,
                f"entry {name!r} is {_what(value)} holding tensors",
                f"Convert that mapping with --key {name}.",
            )
        label = f"{name!r} ({_what(value) if isinstance(name, str) else 'a non-string name'})"
        (dropped if drop_non_tensors else bad).append(label)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ConversionError(
            file,
            f"{where} holds what safetensors cannot store: {shown}",
            "Leave those entries out with --drop-non-tensors (they are not written), or keep "
            "this checkpoint as it is and load it through the sandbox.",
        )
    if not tensors:
        raise ConversionError(
            file,
            f"{where} holds no tensor" + (" besides the entries left out" if dropped else ""),
            "There is nothing to convert; leave the file out of a folder with --exclude.",
        )
    return Prepared(_own_bytes(tensors, file, file_size), dict(FORMAT_METADATA), dropped)


def _own_bytes(
    tensors: dict[str, torch.Tensor], file: str, file_size: int
) -> dict[str, torch.Tensor]:
    """Each tensor contiguous and with a storage of its own, within :func:`output_bound`."""
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total > output_bound(file_size):
        raise ConversionError(
            file,
            f"its tensors would take {total} bytes once written, over {output_bound(file_size)} "
            f"for a {file_size}-byte file (views or expanded tensors multiply what is stored)",
            "Save the checkpoint with tensors that own their data (t.clone()).",
        )
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        storage = t.untyped_storage()
        ptr = storage.data_ptr() if storage.nbytes() else 0
        # The first view of a storage can be written from it; any other view gets a copy
        # (safetensors refuses shared storages, and every name keeps its exact values).
        shared = ptr in seen
        seen.add(ptr)
        out[name] = t.clone(memory_format=torch.contiguous_format) if shared else t.contiguous()
    return out
