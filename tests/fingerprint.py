"""A canonical, JSON-able picture of a loaded object: values, layout, and sharing.

Used on both sides of a parity test: in a trusted process that ran the real
``torch.load(weights_only=False)``, and in the test process after a sandboxed load. Two loads
are equal when their fingerprints are: same types, same values bit for bit, same strides and
offsets, and the same objects and storages shared in the same places.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any


def fingerprint(root: Any) -> Any:  # noqa: PLR0915 (one closure per kind of value)
    seen: dict[int, int] = {}
    storages: dict[int, int] = {}
    keep: list[Any] = []

    def storage_id(t: Any) -> Any:
        s = t.untyped_storage()
        if s.nbytes() == 0 or t.device.type == "meta":
            return None
        return storages.setdefault(s.data_ptr(), len(storages))

    def special(t: Any) -> dict[str, Any] | None:
        """Sparse and nested tensors have no one storage: their parts are compared."""
        import torch

        if t.is_nested:
            return {
                "nested": [walk(x) for x in t.unbind()],
                "sizes": t._nested_tensor_size().tolist(),
                "strides": t._nested_tensor_strides().tolist(),
                "offsets": t._nested_tensor_storage_offsets().tolist(),
                "dtype": str(t.dtype),
            }
        if t.layout is torch.sparse_coo:
            return {
                "layout": str(t.layout),
                "shape": list(t.shape),
                "coalesced": t.is_coalesced(),
                "indices": walk(t._indices()),
                "values": walk(t._values()),
            }
        if t.layout in (torch.sparse_csr, torch.sparse_bsr):
            parts = (t.crow_indices(), t.col_indices(), t.values())
        elif t.layout in (torch.sparse_csc, torch.sparse_bsc):
            parts = (t.ccol_indices(), t.row_indices(), t.values())
        else:
            return None
        return {"layout": str(t.layout), "shape": list(t.shape), "parts": [walk(x) for x in parts]}

    def quantizer(t: Any) -> dict[str, Any]:
        import torch

        q = t.qscheme()
        if q in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            return {"qscheme": str(q), "scale": t.q_scale().hex(), "zero_point": t.q_zero_point()}
        return {
            "qscheme": str(q),
            "scales": walk(t.q_per_channel_scales()),
            "zero_points": walk(t.q_per_channel_zero_points()),
            "axis": t.q_per_channel_axis(),
        }

    def tensor(t: Any) -> dict[str, Any]:
        parts = special(t)
        if parts is not None:
            parts["type"] = type(t).__name__
            parts["requires_grad"] = t.requires_grad
            parts["attrs"] = {k: walk(v) for k, v in sorted(vars(t).items())}
            return parts
        s = t.untyped_storage()
        out = {
            "type": type(t).__name__,
            "dtype": str(t.dtype),
            "shape": list(t.shape),
            "stride": list(t.stride()),
            "offset": t.storage_offset(),
            "requires_grad": t.requires_grad,
            "device": str(t.device),
            "conj": t.is_conj(),
            "neg": t.is_neg(),
            "storage": storage_id(t),
            "storage_nbytes": s.nbytes(),
            "attrs": {k: walk(v) for k, v in sorted(vars(t).items())},
        }
        if t.is_quantized:
            out["quantizer"] = quantizer(t)
        if t.device.type == "meta":
            # A meta storage holds no data, and torch's own legacy loader does not even keep
            # its size consistent across views: only the tensor's own layout is meaningful.
            del out["storage_nbytes"]
        if t.device.type == "cpu":
            import torch

            raw = torch.empty((0,), dtype=torch.uint8).set_(s, 0, (s.nbytes(),), (1,))
            out["sha256"] = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
        return out

    def walk(obj: Any) -> Any:  # noqa: PLR0912
        if obj is None or isinstance(obj, (bool, int, str)):
            return [type(obj).__name__, obj]
        if isinstance(obj, float):
            return ["float", repr(obj) if not math.isfinite(obj) else obj.hex()]
        key = id(obj)
        if key in seen:
            return ["ref", seen[key]]
        seen[key] = len(seen)
        keep.append(obj)
        tname = f"{type(obj).__module__}.{type(obj).__qualname__}"
        import torch

        if isinstance(obj, torch.Tensor):
            return ["tensor", tensor(obj)]
        if isinstance(obj, torch.storage.TypedStorage):
            view = torch.empty((0,), dtype=torch.uint8).set_(obj._untyped_storage)
            return [tname, str(obj.dtype), str(obj.device), walk(view)]
        if isinstance(obj, (bytes, bytearray)):
            return [tname, hashlib.sha256(obj).hexdigest(), len(obj)]
        if isinstance(obj, complex):
            return [tname, obj.real.hex(), obj.imag.hex()]
        if isinstance(obj, dict):
            attrs = (
                {k: walk(v) for k, v in sorted(vars(obj).items())}
                if hasattr(obj, "__dict__")
                else {}
            )
            return [tname, [[walk(k), walk(v)] for k, v in obj.items()], attrs]
        if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
            return [tname, [walk(x) for x in obj]]
        if isinstance(obj, (set, frozenset)):
            return [tname, sorted(repr(x) for x in obj)]
        if type(obj).__module__ == "numpy":
            import numpy as np

            if isinstance(obj, np.ndarray):
                return [
                    tname,
                    obj.dtype.str,
                    list(obj.shape),
                    list(obj.strides),
                    bool(obj.flags.f_contiguous),
                    hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest(),
                ]
            if isinstance(obj, np.generic):
                return [tname, obj.dtype.str, obj.tobytes().hex()]
            return [tname, str(obj)]
        if isinstance(obj, (torch.Size, torch.device, torch.dtype, torch.layout)):
            return [tname, repr(obj)]
        if hasattr(obj, "__dict__"):
            return [tname, {k: walk(v) for k, v in sorted(vars(obj).items())}]
        return [tname, repr(obj)]

    return walk(root)
