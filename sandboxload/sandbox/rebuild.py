"""Validate the child's description and build the objects torch.load would return.

The description is hostile input. Every field is checked before use: kinds from a fixed set,
dtypes from a fixed table, shapes and strides non-negative and bounded, every view inside
its storage, every storage inside the checkpoint or the memfd. Sharing is preserved: one
storage entry is one torch storage (tied weights stay tied), one node is one object (a memo
DAG stays a DAG). Building is two linear passes, with no recursion.

Storages are zero-copy: the checkpoint and the memfd are each mapped privately once
(``UntypedStorage.from_file(..., shared=False)``, as ``torch.load(mmap=True)`` does), and each
storage is a slice of that mapping.
"""

from __future__ import annotations

import argparse
import base64
import collections
import importlib
from collections.abc import Callable
from typing import Any

import torch

from ..errors import CorruptCheckpointError, SandboxLoadError, UnsafeGlobalError
from ..maplocation import restore, untyped
from ..policy import not_plain_data
from . import rebuild_dcp, rebuild_numpy, rebuild_special
from .budget import Budget
from .protocol import (
    DTYPE_SIZES,
    QUANTIZED_DTYPES,
    SHELLS,
    TENSOR_METADATA_KEYS,
    VERSION,
)
from .rebuild_storages import Storages
from .validate import Invalid, check, float_, int_, ints, node_fields, str_

# Fixed table: dtype name -> torch.dtype (nothing is looked up by a name the file chose).
_TORCH_DTYPES = {
    str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)
}
# Layouts as torch.save spells them ("torch.strided"), the names _get_layout accepts.
_TORCH_LAYOUTS = {str(v): v for v in vars(torch).values() if isinstance(v, torch.layout)}
_TENSOR_KINDS = frozenset({"tensor", "qtensor", "sparse", "nested", "storage", "global"})
_TORCH_QSCHEMES = {
    str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.qscheme)
}


class Rebuilder:
    def __init__(
        self,
        name: str,
        map_location: Any,
        file_storage: Callable[[], Any],
        memfd_storage: Callable[[], Any],
        file_size: int,
        memfd_size: int,
        extra_globals: tuple[str, ...],
        deadline: tuple[float, float] | None = None,
        records: bool = False,
    ) -> None:
        self.name = name
        self.budget = Budget(name, deadline)
        self.map_location = map_location
        self.sources = {"file": (file_storage, file_size), "memfd": (memfd_storage, memfd_size)}
        self.extra_globals = extra_globals
        self.storages = Storages(self.sources, self.budget, self._restore)
        self.objects: list[Any] = []
        self.memfd_copied = 0  # bytes copied out of the memfd for NumPy arrays
        # torch.distributed.checkpoint's records: only a READ_DCP description may hold them.
        self.records = rebuild_dcp.Records(self.budget.surrogates) if records else None

    def _restore(self, storage: Any, location: str) -> Any:
        return untyped(restore(storage, location, self.map_location))

    # --- nodes ----------------------------------------------------------------------------

    def build(self, description: Any) -> Any:
        check(isinstance(description, dict), "description must be an object")
        check(description.get("version") == VERSION, "description version")
        nodes = description.get("nodes")
        check(isinstance(nodes, list) and nodes, "nodes must be a non-empty list")
        # Every object costs the pickle at least one opcode byte.
        check(len(nodes) <= self.sources["file"][1] + 64, "more objects than the file has bytes")
        self.storages.build(description.get("storages"))
        self.nodes = nodes
        # Pass 1: shells first, so later nodes (and cycles) can point at them.
        self.objects = [None] * len(nodes)
        shell = [False] * len(nodes)
        for i, node in enumerate(nodes):
            self.budget.tick()
            kind, _ = node_fields(node)
            if kind in SHELLS:
                self.objects[i] = self._shell(node)
                shell[i] = True
        self.shell = shell
        # Pass 2: everything else, in order; each may only use lower ids or shells.
        for i, node in enumerate(nodes):
            self.budget.tick()
            if not shell[i]:
                self.index = i
                self.objects[i] = self._leaf(node)
        # Pass 3: fill the shells.
        for i, node in enumerate(nodes):
            self.budget.tick()
            if shell[i]:
                self.index = len(nodes)
                self._fill(self.objects[i], node)
        if self.records is not None:
            self.records.finish()
        root = int_(description.get("root"), "root", 0, len(nodes) - 1)
        return self.objects[root]

    def ref(self, value: Any) -> Any:
        self.budget.tick()
        check(type(value) is int and 0 <= value < len(self.objects), "node reference")
        check(value < self.index or self.shell[value], "forward reference to a non-container")
        return self.objects[value]

    def _shell(self, node: list[Any]) -> Any:
        kind = node[0]
        if kind == "list":
            return []
        if kind == "dict":
            return {}
        if kind == "odict":
            return collections.OrderedDict()
        if kind == "counter":
            return collections.Counter()
        if kind == "namespace":
            return argparse.Namespace()
        return self._new_object(str_(node[1], "class name"))

    def _new_object(self, dotted: str) -> Any:
        """An instance of a class the user allowed, made without running its code."""
        if dotted not in self.extra_globals:
            module, _, name = dotted.rpartition(".")
            raise UnsafeGlobalError(self.name, module, name)
        module, _, name = dotted.rpartition(".")
        # The one name resolved here is the operator's own (SANDBOXLOAD_ALLOW_GLOBALS).
        cls = getattr(importlib.import_module(module), name, None)
        problem = not_plain_data(cls)  # the rule the policy judged the setting by
        check(problem is None, f"{dotted} {problem}: it cannot be rebuilt without running code")
        assert isinstance(cls, type)
        self.budget.opaque.add(cls)
        return object.__new__(cls)

    def _attrs(self, value: Any) -> dict[str, Any]:
        check(isinstance(value, dict), "attributes")
        out = {}
        for k, v in value.items():
            check(k.isidentifier() and not k.startswith("__"), "attribute name")
            out[k] = self.ref(v)
        return out

    def _pairs(self, value: Any) -> list[tuple[Any, Any]]:
        check(isinstance(value, list), "items")
        out = []
        for pair in value:
            check(isinstance(pair, list) and len(pair) == 2, "item")
            out.append((self.ref(pair[0]), self.ref(pair[1])))
        return out

    def _fill(self, obj: Any, node: list[Any]) -> None:
        kind, args = node[0], node[1:]
        try:
            if kind == "list":
                check(isinstance(args[0], list), "list")
                obj.extend(self.ref(x) for x in args[0])
            elif kind in ("dict", "counter", "odict"):
                keys = self.budget.keys()
                for k, v in self._pairs(args[0]):
                    obj[keys.admit(k)] = v
                if kind == "odict":
                    for k, v in self._attrs(args[1]).items():
                        setattr(obj, k, v)
            elif kind == "namespace":
                for k, v in self._attrs(args[0]).items():
                    setattr(obj, k, v)
            else:
                obj.__dict__.update(self._attrs(args[1]))
        except TypeError as exc:  # an unhashable key, as pickle itself would fail
            raise Invalid(f"{kind}: {exc}") from None

    def _leaf(self, node: list[Any]) -> Any:  # noqa: PLR0912
        kind, args = node[0], node[1:]  # arity already checked against the contract
        if kind == "none":
            return None
        if kind == "bool":
            check(type(args[0]) is bool, "bool")
            return args[0]
        if kind == "int":
            check(type(args[0]) is int, "int")
            return args[0]
        if kind == "float":
            return float_(args[0], "float")
        if kind == "str":
            return str_(args[0], "str", 1 << 30)
        if kind in ("bytes", "bytearray"):
            raw = base64.b64decode(str_(args[0], kind, 1 << 31), validate=True)
            return raw if kind == "bytes" else bytearray(raw)
        if kind == "complex":
            return complex(float_(args[0], "complex"), float_(args[1], "complex"))
        if kind in ("tuple", "set", "frozenset"):
            check(isinstance(args[0], list), kind)
            items = [self.ref(x) for x in args[0]]
            try:
                if kind != "tuple":
                    keys = self.budget.keys()
                    items = [keys.admit(x) for x in items]
                return {"tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)
            except TypeError as exc:
                raise Invalid(f"{kind}: {exc}") from None
        if kind == "size":
            return torch.Size(ints(args[0], "size"))
        if kind == "device":
            index = None if args[1] is None else int_(args[1], "device index", 0, 1 << 16)
            try:
                return torch.device(str_(args[0], "device type", 32), index)
            except RuntimeError as exc:
                raise Invalid(f"device: {exc}") from None
        if kind == "dtype":
            check(args[0] in _TORCH_DTYPES, "dtype")
            return _TORCH_DTYPES[args[0]]
        if kind == "layout":
            check(args[0] in _TORCH_LAYOUTS, "layout")
            return _TORCH_LAYOUTS[args[0]]
        if kind == "qscheme":
            check(args[0] in _TORCH_QSCHEMES, "qscheme")
            return _TORCH_QSCHEMES[args[0]]
        if kind in _TENSOR_KINDS:
            return self._tensor_kind(kind, args)
        if kind == "meta_tensor":
            check(args[0] in DTYPE_SIZES and type(args[3]) is bool, "meta")
            size, stride = ints(args[1], "size"), ints(args[2], "stride")
            check(len(size) == len(stride), "meta tensor rank")
            return torch.empty_strided(
                size, stride, dtype=_TORCH_DTYPES[args[0]], device="meta", requires_grad=args[3]
            )
        if kind == "param":
            check(type(args[1]) is bool, "param")
            data = self.ref(args[0])
            check(type(data) is torch.Tensor, "parameter data must be a tensor")
            return self._set_attrs(torch.nn.Parameter(data, args[1]), args[2])
        if kind == "device_tensor":
            return self._device_tensor(args)
        if kind == "npdtype":
            return rebuild_numpy.dtype(args)
        if kind == "npscalar":
            return rebuild_numpy.scalar(args, self.ref)
        if kind == "ndarray":
            return rebuild_numpy.ndarray(
                args, self.ref, self._memfd_bytes, self.sources["memfd"][1]
            )
        if kind in ("record", "enum", "path") and self.records is not None:
            if kind == "record":
                return self.records.record(args[0], self._attrs(args[1]))
            if kind == "enum":
                return self.records.enum(args[0], args[1])
            return self.records.path(args[0])
        raise Invalid(f"node kind {kind!r} cannot appear here")

    def _tensor_kind(self, kind: str, args: list[Any]) -> Any:
        if kind == "tensor":
            return self._tensor(args)
        if kind == "qtensor":
            return self._qtensor(args)
        if kind == "sparse":
            check(args[0] in _TORCH_LAYOUTS, "sparse layout")
            t = rebuild_special.sparse(_TORCH_LAYOUTS[args[0]], self.ref(args[1]), self.budget.tick)
            return self._set_attrs(t, args[2])
        if kind == "nested":
            check(isinstance(args[0], list), "nested tensor parts")
            t = rebuild_special.nested([self.ref(x) for x in args[0]], self.budget.tick)
            return self._set_attrs(t, args[1])
        if kind == "storage":
            storage, dtype = self.storages.get(args[0])
            return rebuild_special.storage_value(storage, _TORCH_DTYPES[dtype])
        if kind == "global":
            return rebuild_special.global_value(args[0])
        raise Invalid(f"node kind {kind!r}")

    def _memfd_bytes(self, offset: int, nbytes: int) -> bytes:
        """A copy of a memfd range for NumPy (which owns its bytes). All such copies of one
        load together stay within the memfd's size: a range named twice is paid once."""
        self.memfd_copied += nbytes
        check(self.memfd_copied <= self.sources["memfd"][1], "numpy arrays exceed the memfd")
        self.budget.tick(1 + nbytes // 4096)
        view = torch.empty(0, dtype=torch.uint8).set_(self.sources["memfd"][0](), offset, (nbytes,))
        return view.numpy().tobytes()  # one memcpy (bytes(storage) went byte by byte)

    def _grad(self, t: torch.Tensor, requires_grad: Any) -> None:
        check(type(requires_grad) is bool, "requires_grad")
        if requires_grad:
            check(t.is_floating_point() or t.is_complex(), "requires_grad on an integer tensor")
            t.requires_grad_(True)

    def _set_attrs(self, t: Any, attrs: Any) -> Any:
        for k, v in self._attrs(attrs).items():
            setattr(t, k, v)
        return t

    def _qtensor(self, args: list[Any]) -> torch.Tensor:
        sid, offset, size, stride, requires_grad, qparams, attrs = args
        _, dtype = self.storages.get(sid)
        storage, offset, size, stride = self.storages.bounded_view(sid, dtype, offset, size, stride)
        t = rebuild_special.qtensor(storage, dtype, size, stride, offset, self.ref(qparams))
        self._grad(t, requires_grad)
        return self._set_attrs(t, attrs)

    def _tensor(self, args: list[Any]) -> torch.Tensor:
        sid, offset, size, stride, requires_grad, dtype, metadata, attrs = args
        storage, offset, size, stride = self.storages.bounded_view(sid, dtype, offset, size, stride)
        check(dtype not in QUANTIZED_DTYPES, "a quantized storage holds quantized tensors only")
        t = torch.empty((0,), dtype=_TORCH_DTYPES[dtype], device=storage.device)
        t.set_(storage, offset, size, stride)
        self._grad(t, requires_grad)
        check(isinstance(metadata, dict), "tensor metadata")
        if metadata:
            check(
                set(metadata) <= set(TENSOR_METADATA_KEYS)
                and all(type(v) is bool for v in metadata.values()),
                "tensor metadata",
            )
            torch._utils.set_tensor_metadata(t, metadata)
        return self._set_attrs(t, attrs)

    def _device_tensor(self, args: list[Any]) -> torch.Tensor:
        check(args[1] in _TORCH_DTYPES and type(args[3]) is bool, "tensor")
        data = self.ref(args[0])
        if not isinstance(data, torch.Tensor):
            check(
                type(data).__module__ == "numpy" and type(data).__name__ == "ndarray",
                "device tensor data",
            )
            data = torch.from_numpy(data)
        location = str_(args[2], "device")
        target = self._restore(torch.UntypedStorage(0), location).device
        dtype = _TORCH_DTYPES[args[1]]
        # A conversion allocates numel elements, which an expanded (stride 0) view can make
        # far more than the file holds (a 64-byte file, 1 GB): bounded by the file's size.
        made = data.numel() * torch.empty((), dtype=dtype).element_size()
        check(made <= 2 * self.sources["file"][1] + (64 << 20), "device tensor too large")
        self.budget.tick(1 + made // 4096)
        t = data.to(dtype=dtype, device=target)
        t.requires_grad = args[3]
        return t


def rebuild(description: Any, name: str, **kwargs: Any) -> Any:
    """Build the result, turning any validation failure into CorruptCheckpointError."""
    try:
        return Rebuilder(name, **kwargs).build(description)
    except Invalid as exc:
        raise CorruptCheckpointError(name, f"sandbox description rejected: {exc}") from None
    except SandboxLoadError:
        raise
    except Exception as exc:  # anything a hostile description provokes is the file's fault
        raise CorruptCheckpointError(name, f"{type(exc).__name__}: {exc}") from None
