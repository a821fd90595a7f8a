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
import math
import re
from collections.abc import Callable
from typing import Any

import torch

from ..errors import CorruptCheckpointError, UnsafeGlobalError
from .protocol import DTYPE_SIZES, SHELLS, VERSION

MAX_DIMS = 64
MAX_ELEMENTS = 1 << 62
_NUMPY_CODE = re.compile(r"[<>|=]?[biufc?][0-9]{0,2}")
_TORCH_DTYPES = {
    str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)
}


class Invalid(Exception):
    """A description field failed validation (reported as CorruptCheckpointError)."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise Invalid(what)


def _int(value: Any, what: str, lo: int = 0, hi: int = MAX_ELEMENTS) -> int:
    _check(type(value) is int and lo <= value <= hi, f"{what} out of range")
    return value


def _ints(value: Any, what: str) -> list[int]:
    _check(isinstance(value, list) and len(value) <= MAX_DIMS, f"{what} must be a short list")
    return [_int(v, what) for v in value]


def _str(value: Any, what: str, limit: int = 256) -> str:
    _check(isinstance(value, str) and len(value) <= limit, f"{what} must be a short string")
    return value


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
    ) -> None:
        self.name = name
        self.map_location = map_location
        self.sources = {"file": (file_storage, file_size), "memfd": (memfd_storage, memfd_size)}
        self.extra_globals = extra_globals
        self.storages: list[tuple[Any, str, int]] = []  # (untyped storage, dtype, nbytes)
        self.objects: list[Any] = []

    # --- storages -------------------------------------------------------------------------

    def _restore(self, storage: Any, location: str) -> Any:
        """torch.load's map_location rules, via torch's own default_restore_location."""
        restore = torch.serialization.default_restore_location
        ml = self.map_location
        if ml is None:
            return restore(storage, location)
        if isinstance(ml, dict):
            return restore(storage, ml.get(location, location))
        if isinstance(ml, (str, bytes)):
            return restore(storage, ml.decode() if isinstance(ml, bytes) else ml)
        if isinstance(ml, torch.device):
            return restore(storage, str(ml))
        result = ml(storage, location)
        return restore(storage, location) if result is None else result

    def build_storages(self, entries: Any) -> None:
        _check(isinstance(entries, list), "storages must be a list")
        for entry in entries:
            _check(isinstance(entry, list) and len(entry) == 5, "storage entry")
            dtype, nbytes, source, offset, location = entry
            _check(dtype in DTYPE_SIZES, "storage dtype")
            _check(source in self.sources, "storage source")
            getter, limit = self.sources[source]
            nbytes = _int(nbytes, "storage size", 0, limit)
            offset = _int(offset, "storage offset", 0, limit)
            _check(offset + nbytes <= limit, "storage lies outside its source")
            location = _str(location, "storage location", 64)
            storage = getter()[offset : offset + nbytes] if nbytes else torch.UntypedStorage(0)
            storage = self._restore(storage, location)
            if isinstance(storage, torch.TypedStorage):
                storage = storage.untyped_storage()
            self.storages.append((storage, dtype, nbytes))

    # --- nodes ----------------------------------------------------------------------------

    def build(self, description: Any) -> Any:
        _check(isinstance(description, dict), "description must be an object")
        _check(description.get("version") == VERSION, "description version")
        nodes = description.get("nodes")
        _check(isinstance(nodes, list) and nodes, "nodes must be a non-empty list")
        self.build_storages(description.get("storages"))
        self.nodes = nodes
        # Pass 1: shells first, so later nodes (and cycles) can point at them.
        self.objects = [None] * len(nodes)
        shell = [False] * len(nodes)
        for i, node in enumerate(nodes):
            _check(isinstance(node, list) and node and isinstance(node[0], str), "node")
            if node[0] in SHELLS:
                self.objects[i] = self._shell(node)
                shell[i] = True
        self.shell = shell
        # Pass 2: everything else, in order; each may only use lower ids or shells.
        for i, node in enumerate(nodes):
            if not shell[i]:
                self.index = i
                self.objects[i] = self._leaf(node)
        # Pass 3: fill the shells.
        for i, node in enumerate(nodes):
            if shell[i]:
                self.index = len(nodes)
                self._fill(self.objects[i], node)
        root = _int(description.get("root"), "root", 0, len(nodes) - 1)
        return self.objects[root]

    def ref(self, value: Any) -> Any:
        _check(type(value) is int and 0 <= value < len(self.objects), "node reference")
        _check(value < self.index or self.shell[value], "forward reference to a non-container")
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
        return self._new_object(_str(node[1] if len(node) > 1 else None, "class name"))

    def _new_object(self, dotted: str) -> Any:
        """An instance of a class the user allowed, made without running its code."""
        if dotted not in self.extra_globals:
            module, _, name = dotted.rpartition(".")
            raise UnsafeGlobalError(self.name, module, name)
        module, _, name = dotted.rpartition(".")
        cls = getattr(importlib.import_module(module), name, None)
        _check(
            isinstance(cls, type)
            and cls.__new__ is object.__new__
            and "__setstate__" not in vars(cls)
            and hasattr(cls, "__dict__")
            and not issubclass(cls, (torch.Tensor, BaseException)),
            f"{dotted} is not a plain data class that can be rebuilt without running code",
        )
        return object.__new__(cls)

    def _attrs(self, value: Any) -> dict[str, Any]:
        _check(isinstance(value, dict), "attributes")
        out = {}
        for k, v in value.items():
            _check(k.isidentifier() and not k.startswith("__"), "attribute name")
            out[k] = self.ref(v)
        return out

    def _pairs(self, value: Any) -> list[tuple[Any, Any]]:
        _check(isinstance(value, list), "items")
        out = []
        for pair in value:
            _check(isinstance(pair, list) and len(pair) == 2, "item")
            out.append((self.ref(pair[0]), self.ref(pair[1])))
        return out

    def _fill(self, obj: Any, node: list[Any]) -> None:
        kind = node[0]
        try:
            if kind == "list":
                _check(len(node) == 2 and isinstance(node[1], list), "list")
                obj.extend(self.ref(x) for x in node[1])
            elif kind in ("dict", "counter"):
                _check(len(node) == 2, kind)
                for k, v in self._pairs(node[1]):
                    obj[k] = v
            elif kind == "odict":
                _check(len(node) == 3, "odict")
                for k, v in self._pairs(node[1]):
                    obj[k] = v
                for k, v in self._attrs(node[2]).items():
                    setattr(obj, k, v)
            elif kind == "namespace":
                _check(len(node) == 2, "namespace")
                for k, v in self._attrs(node[1]).items():
                    setattr(obj, k, v)
            else:
                _check(len(node) == 3, "object")
                obj.__dict__.update(self._attrs(node[2]))
        except TypeError as exc:  # an unhashable key, as pickle itself would fail
            raise Invalid(f"{kind}: {exc}") from None

    def _leaf(self, node: list[Any]) -> Any:  # noqa: PLR0912
        kind, args = node[0], node[1:]
        if kind == "none":
            return None
        if kind == "bool":
            _check(len(args) == 1 and type(args[0]) is bool, "bool")
            return args[0]
        if kind == "int":
            _check(len(args) == 1 and type(args[0]) is int, "int")
            return args[0]
        if kind == "float":
            return _float(args)
        if kind == "str":
            return _str(args[0] if len(args) == 1 else None, "str", 1 << 30)
        if kind in ("bytes", "bytearray"):
            raw = base64.b64decode(_str(args[0] if args else None, kind, 1 << 31), validate=True)
            return raw if kind == "bytes" else bytearray(raw)
        if kind == "complex":
            _check(len(args) == 2, "complex")
            return complex(_float(args[:1]), _float(args[1:]))
        if kind in ("tuple", "set", "frozenset"):
            _check(len(args) == 1 and isinstance(args[0], list), kind)
            items = [self.ref(x) for x in args[0]]
            try:
                return {"tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)
            except TypeError as exc:
                raise Invalid(f"{kind}: {exc}") from None
        if kind == "size":
            _check(len(args) == 1, "size")
            return torch.Size(_ints(args[0], "size"))
        if kind == "device":
            _check(len(args) == 2, "device")
            index = None if args[1] is None else _int(args[1], "device index", 0, 1 << 16)
            try:
                return torch.device(_str(args[0], "device type", 32), index)
            except RuntimeError as exc:
                raise Invalid(f"device: {exc}") from None
        if kind == "dtype":
            _check(len(args) == 1 and args[0] in _TORCH_DTYPES, "dtype")
            return _TORCH_DTYPES[args[0]]
        if kind == "layout":
            _check(
                len(args) == 1 and isinstance(getattr(torch, str(args[0]), None), torch.layout),
                "layout",
            )
            return getattr(torch, args[0])
        if kind == "tensor":
            return self._tensor(args)
        if kind == "meta_tensor":
            _check(len(args) == 4 and args[0] in DTYPE_SIZES and type(args[3]) is bool, "meta")
            size, stride = _ints(args[1], "size"), _ints(args[2], "stride")
            _check(len(size) == len(stride), "meta tensor rank")
            return torch.empty_strided(
                size, stride, dtype=_TORCH_DTYPES[args[0]], device="meta", requires_grad=args[3]
            )
        if kind == "param":
            _check(len(args) == 3 and type(args[1]) is bool, "param")
            data = self.ref(args[0])
            _check(type(data) is torch.Tensor, "parameter data must be a tensor")
            param = torch.nn.Parameter(data, args[1])
            for k, v in self._attrs(args[2]).items():
                setattr(param, k, v)
            return param
        if kind == "device_tensor":
            return self._device_tensor(args)
        if kind in ("ndarray", "npscalar", "npdtype"):
            return self._numpy(kind, args)
        raise Invalid(f"unknown node kind {kind!r}")

    def _tensor(self, args: list[Any]) -> torch.Tensor:
        _check(len(args) == 8, "tensor")
        sid, offset, size, stride, requires_grad, dtype, metadata, attrs = args
        _check(type(sid) is int and 0 <= sid < len(self.storages), "tensor storage")
        storage, _, nbytes = self.storages[sid]
        _check(dtype in DTYPE_SIZES and type(requires_grad) is bool, "tensor dtype")
        offset = _int(offset, "storage offset")
        size, stride = _ints(size, "size"), _ints(stride, "stride")
        _check(len(size) == len(stride), "size and stride differ in rank")
        numel = math.prod(size)
        _check(numel <= MAX_ELEMENTS, "tensor too large")
        if numel:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
            _check((last + 1) * DTYPE_SIZES[dtype] <= nbytes, "tensor view outside its storage")
        t = torch.empty((0,), dtype=_TORCH_DTYPES[dtype], device=storage.device)
        t.set_(storage, offset, size, stride)
        if requires_grad:
            _check(t.is_floating_point() or t.is_complex(), "requires_grad on an integer tensor")
            t.requires_grad_(True)
        _check(isinstance(metadata, dict), "tensor metadata")
        if metadata:
            _check(
                set(metadata) <= {"conj", "neg"}
                and all(type(v) is bool for v in metadata.values()),
                "tensor metadata",
            )
            torch._utils.set_tensor_metadata(t, metadata)
        for k, v in self._attrs(attrs).items():
            setattr(t, k, v)
        return t

    def _device_tensor(self, args: list[Any]) -> torch.Tensor:
        _check(len(args) == 4 and args[1] in _TORCH_DTYPES and type(args[3]) is bool, "tensor")
        data = self.ref(args[0])
        if not isinstance(data, torch.Tensor):
            _check(
                type(data).__module__ == "numpy" and type(data).__name__ == "ndarray",
                "device tensor data",
            )
            data = torch.from_numpy(data)
        location = _str(args[2], "device")
        target = self._restore(torch.UntypedStorage(0), location).device
        t = data.to(dtype=_TORCH_DTYPES[args[1]], device=target)
        t.requires_grad = args[3]
        return t

    def _numpy(self, kind: str, args: list[Any]) -> Any:
        """Replay numpy's own unpickling calls, on validated plain values only."""
        import numpy as np

        if kind == "npdtype":
            _check(len(args) == 4, "numpy dtype")
            code, align, copy, state = args
            _check(
                _NUMPY_CODE.fullmatch(_str(code, "numpy dtype", 8)) is not None,
                "numpy dtype must be plain numeric",
            )
            _check(type(align) is bool and type(copy) is bool, "numpy dtype flags")
            dtype = np.dtype(code, align, copy)
            if state is not None:
                _check(
                    isinstance(state, list)
                    and 0 < len(state) <= 9
                    and all(x is None or type(x) in (int, str) for x in state)
                    and all(x is None for x in state[2:5]),
                    "numpy dtype state",
                )
                dtype.__setstate__(tuple(state))
            _check(
                dtype.kind in "biufc" and dtype.fields is None and not dtype.hasobject,
                "numpy dtype must be plain numeric",
            )
            return dtype
        dtype = self.ref(args[2] if kind == "ndarray" else args[0])
        _check(isinstance(dtype, np.dtype), "numpy dtype reference")
        if kind == "npscalar":
            _check(len(args) == 2, "numpy scalar")
            raw = base64.b64decode(_str(args[1], "numpy scalar", 64), validate=True)
            _check(len(raw) == dtype.itemsize, "numpy scalar size")
            return _np_module("multiarray").scalar(dtype, raw)
        _check(len(args) == 7 and args[0] in ("reconstruct", "frombuffer"), "ndarray")
        via, version, _, shape, fortran, offset, nbytes = args
        shape = tuple(_ints(shape, "shape"))
        _check(type(fortran) is bool and type(version) is int, "ndarray")
        _, limit = self.sources["memfd"]
        offset, nbytes = _int(offset, "offset", 0, limit), _int(nbytes, "nbytes", 0, limit)
        _check(
            nbytes == math.prod(shape) * dtype.itemsize and offset + nbytes <= limit,
            "ndarray bounds",
        )
        raw = b""
        if nbytes:
            storage = self.sources["memfd"][0]()[offset : offset + nbytes]
            raw = bytes(storage)
        if via == "frombuffer":
            return _np_module("numeric")._frombuffer(raw, dtype, shape, "F" if fortran else "C")
        arr = _np_module("multiarray")._reconstruct(np.ndarray, (0,), b"b")
        arr.__setstate__((version, shape, dtype, fortran, raw))
        return arr


def _np_module(name: str) -> Any:
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{name}")


def _float(args: list[Any]) -> float:
    _check(len(args) == 1, "float")
    value = args[0]
    if isinstance(value, str):
        _check(value in ("nan", "inf", "-inf"), "float")
        return float(value)
    _check(type(value) in (int, float), "float")
    return float(value)


def rebuild(description: Any, name: str, **kwargs: Any) -> Any:
    """Build the result, turning any validation failure into CorruptCheckpointError."""
    try:
        return Rebuilder(name, **kwargs).build(description)
    except Invalid as exc:
        raise CorruptCheckpointError(name, f"sandbox description rejected: {exc}") from None
    except (ValueError, TypeError, OverflowError, RuntimeError) as exc:
        raise CorruptCheckpointError(name, f"{type(exc).__name__}: {exc}") from None
