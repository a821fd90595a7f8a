"""Quantized, sparse and nested tensors, storages and globals as values: torch's own rebuild
calls, replayed on validated values.

Everything is checked before torch's constructors see it. torch does not check a sparse
tensor's indices on load unless the caller enabled ``check_sparse_tensor_invariants``, which
lets a file read or write outside its memory once the tensor is used; here they are always
checked, so a file torch would load into an unsafe tensor is refused instead. Views
(quantized tensors, nested components) are bounded by their storage or buffer here, as torch
bounds them too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from .protocol import QUANTIZED_DTYPES
from .validate import check, float_, ints, str_

Ref = Callable[[Any], Any]

_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_affine_float_qparams)
_COMPRESSED = (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


@functools.cache
def torch_globals() -> dict[str, Any]:
    """Classes and functions torch's weights-only allowlist admits, by name, with torch's own
    default safe globals: what a checkpoint holding one of them as a value gets from torch (a
    fixed table, taken once)."""
    from torch._weights_only_unpickler import _get_allowed_globals

    table = {
        name: value
        for name, value in _get_allowed_globals().items()
        if not isinstance(value, (torch.dtype, torch.qscheme))
    }
    for entry in torch.serialization.get_safe_globals():
        obj = entry[0] if isinstance(entry, tuple) else entry
        if getattr(obj, "__module__", "").startswith("torch."):
            table.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return table


def global_value(name: Any) -> Any:
    table = torch_globals()
    check(str_(name, "global name") in table, f"{name} is not a value torch's allowlist admits")
    return table[name]


def storage_value(storage: Any, dtype: torch.dtype) -> torch.storage.TypedStorage:
    return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


def _plain(value: Any, what: str) -> torch.Tensor:
    """A plain tensor that holds no more elements than its storage has bytes for: an
    expanded (stride 0) view would let a few bytes of file stand for billions of indices,
    scales or sizes, which torch then copies or checks one by one."""
    check(type(value) is torch.Tensor and value.layout is torch.strided, f"{what} must be a tensor")
    check(not value.is_quantized and not value.is_nested, f"{what} must be a plain tensor")
    held = value.untyped_storage().nbytes()
    check(value.numel() * value.element_size() <= held, f"{what} repeats its storage's bytes")
    return value


def qtensor(
    storage: Any, dtype: str, size: list[int], stride: list[int], offset: int, qparams: Any
) -> torch.Tensor:
    """torch._utils._rebuild_qtensor, on a storage view already checked against its bounds.
    The quantizer is made on an empty tensor (torch allocates the full size first, which an
    expanded view could make far larger than the file)."""
    check(dtype in QUANTIZED_DTYPES, "a quantized tensor needs a quantized storage")
    check(type(qparams) is tuple and qparams, "quantizer parameters")
    qscheme, qdtype, device = qparams[0], _qdtype(dtype), storage.device
    if qscheme is torch.per_tensor_affine:
        check(len(qparams) == 3 and type(qparams[2]) is int, "per-tensor quantizer parameters")
        scale = float_(qparams[1], "quantizer scale")
        t = torch._empty_affine_quantized(
            [0], scale=scale, zero_point=qparams[2], dtype=qdtype, device=device
        )
    elif qscheme in _PER_CHANNEL:
        check(len(qparams) == 4, "per-channel quantizer parameters")
        _, scales, zero_points, axis = qparams
        check(type(axis) is int and 0 <= axis < len(size), "per-channel axis out of range")
        scales = _channel_values(scales, size[axis], qscheme, device, "scales")
        zero_points = _channel_values(zero_points, size[axis], qscheme, device, "zero points")
        shape = [0] * len(size)
        shape[axis] = size[axis]  # one value per channel, no elements unless 1-D
        t = torch._empty_per_channel_affine_quantized(
            shape, scales=scales, zero_points=zero_points, axis=axis, dtype=qdtype, device=device
        )
    else:
        check(False, f"quantized tensors with {qscheme} cannot be rebuilt (torch cannot either)")
    t.set_(storage, offset, size, stride)
    return t


def _qdtype(name: str) -> torch.dtype:
    return getattr(torch, name)  # name is one of QUANTIZED_DTYPES, a fixed table


def _channel_values(value: Any, n: int, qscheme: Any, device: Any, what: str) -> torch.Tensor:
    """Scales or zero points: a 1-D tensor of ``n`` values, or a list torch converts."""
    if type(value) is list:
        check(len(value) == n, f"per-channel {what}: one per channel")
        floats = qscheme is torch.per_channel_affine_float_qparams or what == "scales"
        if floats:
            check(all(type(v) in (int, float) for v in value), f"per-channel {what}")
            wide = qscheme is torch.per_channel_affine
            dtype = torch.double if wide else torch.float
        else:
            check(all(type(v) is int for v in value), f"per-channel {what}")
            dtype = torch.long
        return torch.tensor(value, dtype=dtype, device=device)
    value = _plain(value, f"per-channel {what}")
    check(value.dim() == 1 and value.numel() == n, f"per-channel {what}: one per channel")
    return value


def sparse(layout: torch.layout, data: Any, tick: Callable[[int], None]) -> torch.Tensor:
    """torch._utils._rebuild_sparse_tensor, then the invariant checks torch skips by default."""
    check(type(data) is tuple, "sparse tensor data")
    if layout is torch.sparse_coo:
        check(len(data) in (3, 4), "sparse COO data")
        indices, values = _plain(data[0], "sparse indices"), _plain(data[1], "sparse values")
        size, coalesced = data[2], data[3] if len(data) == 4 else None
        check(type(size) is torch.Size, "sparse size")
        check(coalesced is None or type(coalesced) is bool, "sparse coalesced flag")
        tick(1 + (indices.numel() + values.numel()) // 4096)
        t = torch.sparse_coo_tensor(
            indices, values, size, check_invariants=False, is_coalesced=coalesced
        )
        if t.device.type != "meta":  # a meta tensor has no indices to be wrong
            torch._validate_sparse_coo_tensor_args(
                t._indices(), t._values(), t.size(), t.is_coalesced(), check_pinning=False
            )
        return t
    check(layout in _COMPRESSED, f"sparse layout {layout} cannot be rebuilt (torch cannot either)")
    check(len(data) == 4, "sparse compressed data")
    compressed = _plain(data[0], "compressed indices")
    plain, values = _plain(data[1], "plain indices"), _plain(data[2], "sparse values")
    check(type(data[3]) is torch.Size, "sparse size")
    tick(1 + (compressed.numel() + plain.numel() + values.numel()) // 4096)
    t = torch.sparse_compressed_tensor(
        compressed, plain, values, data[3], layout=layout, check_invariants=False
    )
    if t.device.type != "meta":
        torch._validate_sparse_compressed_tensor_args(
            compressed, plain, values, data[3], layout, check_pinning=False
        )
    return t


def nested(parts: list[Any], tick: Callable[[int], None]) -> torch.Tensor:
    """torch._utils._rebuild_nested_tensor, once every component lies inside the buffer."""
    check(len(parts) == 4, "nested tensor parts")
    buffer, sizes, strides, offsets = (_plain(p, "nested tensor part") for p in parts)
    check(buffer.dim() == 1 and buffer.is_contiguous(), "nested buffer must be flat")
    # torch reads the offsets' memory as if contiguous, whatever their strides say: what is
    # checked here must be exactly what torch reads.
    check(
        sizes.is_contiguous() and strides.is_contiguous() and offsets.is_contiguous(),
        "nested sizes, strides and offsets must be contiguous",
    )
    check(
        sizes.dtype == strides.dtype == offsets.dtype == torch.int64
        and sizes.dim() == 2
        and sizes.shape == strides.shape
        and offsets.shape == sizes.shape[:1],
        "nested sizes, strides and offsets",
    )
    check(buffer.device.type == "cpu", "nested tensors are rebuilt on the CPU only")
    tick(1 + 3 * sizes.numel() // 1024)
    n = buffer.numel()
    rows = zip(sizes.tolist(), strides.tolist(), offsets.tolist(), strict=True)
    for row_size, row_stride, offset in rows:
        tick(1)
        size, stride = ints(row_size, "nested size"), ints(row_stride, "nested stride")
        check(type(offset) is int and 0 <= offset <= n, "nested offset outside the buffer")
        if math.prod(size):
            last = offset + sum((a - 1) * b for a, b in zip(size, stride, strict=True))
            check(last < n, "a nested component runs past its buffer")
    return torch._nested_view_from_buffer(buffer, sizes, strides, offsets)
