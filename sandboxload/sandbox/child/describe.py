"""Turn the stand-in graph into the flat node table of :mod:`protocol` (child side).

Iterative, identity-preserving: an object reached twice becomes one node referenced twice,
so a memo DAG stays a DAG, and deep nesting costs no recursion.
"""

import binascii
import math

from ..protocol import NODE_FIELDS, SHELLS
from . import data_standins as ds
from . import dcp_standins as dcp
from . import torch_standins as ts
from .allowlist import VALUE_NAMES
from .errors import Malformed


class Describer:
    def __init__(self, write_region) -> None:
        self.nodes: list = []
        self.ids: dict = {}
        self.keep: list = []  # keeps every described object alive, so id() stays unique
        self.write_region = write_region  # bytes -> (offset, nbytes) in the memfd

    def describe(self, root: object) -> int:
        # Post-order DFS. A shell (mutable container) gets its id when first seen, so a
        # cycle back into it is a plain reference; everything else gets its id after its
        # children, so it only ever references lower ids or shells.
        stack = [(root, False)]
        pending: dict = {}
        while stack:
            obj, expanded = stack.pop()
            key = id(obj)
            if key in self.ids and not expanded:
                continue
            if not expanded:
                kind = self._kind(obj)
                if kind in SHELLS:
                    self.ids[key] = self._reserve()
                    self.keep.append(obj)
                elif key in pending:
                    raise Malformed("an immutable object contains itself")
                pending[key] = True
                stack.append((obj, True))
                for child in reversed(self._children(obj)):
                    if id(child) not in self.ids:
                        stack.append((child, False))
                continue
            pending.pop(key, None)
            node = self._node(obj)
            if len(node) != 1 + len(NODE_FIELDS[node[0]]):  # the contract, kept by construction
                raise Malformed(f"internal: {node[0]} node does not match the protocol")
            if key in self.ids:
                self.nodes[self.ids[key]] = node
            else:
                self.ids[key] = len(self.nodes)
                self.nodes.append(node)
                self.keep.append(obj)
        return self.ids[id(root)]

    def _reserve(self) -> int:
        self.nodes.append(None)
        return len(self.nodes) - 1

    @staticmethod
    def _kind(obj: object) -> str:
        if isinstance(obj, ds.ODict):
            return "odict"
        if isinstance(obj, ds.CounterSI):
            return "counter"
        if type(obj) is dict:
            return "dict"
        if type(obj) is list:
            return "list"
        if isinstance(obj, ds.NamespaceSI):
            return "namespace"
        if isinstance(obj, ds.GenericObject):
            return "object"
        return "leaf"

    @staticmethod
    def _children(obj: object) -> list:
        t = type(obj)
        if t in (list, tuple, set, frozenset):
            return list(obj)
        if isinstance(obj, dict):
            out = [x for kv in obj.items() for x in kv]
            if isinstance(obj, ds.ODict):
                out += list(vars(obj).values())
            return out
        if isinstance(obj, (ds.NamespaceSI, ds.GenericObject)):
            return list(vars(obj).values())
        if isinstance(obj, dcp.Record):
            return list(obj.fields.values())
        if isinstance(obj, (ts.TensorRef, ts.ParamRef)):
            extra = [obj.data] if isinstance(obj, ts.ParamRef) else []
            return extra + list(obj.attrs.values())
        if t is ts.QTensorRef:
            return [obj.qparams, *obj.attrs.values()]
        if t is ts.SparseRef:
            return [obj.data, *obj.attrs.values()]
        if t is ts.NestedRef:
            return [*obj.parts, *obj.attrs.values()]
        if isinstance(obj, ts.DeviceTensorRef):
            return [obj.data]
        if isinstance(obj, (ds.NDArray, ds.NPScalar)):
            return [obj.dtype]
        return []

    def _ref(self, obj: object) -> int:
        return self.ids[id(obj)]

    def _attrs(self, attrs: dict) -> dict:
        for k in attrs:
            if not isinstance(k, str):
                raise Malformed("attribute names must be str")
        return {k: self._ref(v) for k, v in attrs.items()}

    def _node(self, obj: object) -> list:  # noqa: PLR0912
        t = type(obj)
        if obj is None:
            return ["none"]
        if t is bool:
            return ["bool", obj]
        if t is int:
            return ["int", obj]
        if t is float:
            return ["float", obj if math.isfinite(obj) else repr(obj)]
        if t is str:
            return ["str", obj]
        if t in (bytes, bytearray):
            return [t.__name__, _b64(obj)]
        if t is complex:
            return ["complex", _num(obj.real), _num(obj.imag)]
        if t in (list, tuple, set, frozenset):
            return [t.__name__, [self._ref(x) for x in obj]]
        if t is dict or isinstance(obj, ds.CounterSI):
            kind = "dict" if t is dict else "counter"
            return [kind, [[self._ref(k), self._ref(v)] for k, v in obj.items()]]
        if isinstance(obj, ds.ODict):
            return [
                "odict",
                [[self._ref(k), self._ref(v)] for k, v in obj.items()],
                self._attrs(vars(obj)),
            ]
        if isinstance(obj, ds.NamespaceSI):
            return ["namespace", self._attrs(vars(obj))]
        if isinstance(obj, ds.GenericObject):
            return ["object", obj.qualname, self._attrs(vars(obj))]
        if isinstance(obj, dcp.Record):
            return ["record", obj.qualname, self._attrs(obj.fields)]
        if t is dcp.EnumValue:
            return ["enum", obj.qualname, obj.value]
        if t is dcp.PathValue:
            return ["path", list(obj.parts)]
        if t is ts.TensorRef:
            return [
                "tensor",
                obj.storage.index,
                obj.offset,
                list(obj.size),
                list(obj.stride),
                obj.requires_grad,
                obj.dtype,
                obj.metadata,
                self._attrs(obj.attrs),
            ]
        if t is ts.QTensorRef:
            return [
                "qtensor",
                obj.storage.index,
                obj.offset,
                list(obj.size),
                list(obj.stride),
                obj.requires_grad,
                self._ref(obj.qparams),
                self._attrs(obj.attrs),
            ]
        if t is ts.SparseRef:
            return ["sparse", obj.layout, self._ref(obj.data), self._attrs(obj.attrs)]
        if t is ts.NestedRef:
            return ["nested", [self._ref(p) for p in obj.parts], self._attrs(obj.attrs)]
        if t is ts.MetaTensorRef:
            return ["meta_tensor", obj.dtype, list(obj.size), list(obj.stride), obj.requires_grad]
        if t is ts.ParamRef:
            return ["param", self._ref(obj.data), obj.requires_grad, self._attrs(obj.attrs)]
        if t is ts.DeviceTensorRef:
            return ["device_tensor", self._ref(obj.data), obj.dtype, obj.device, obj.requires_grad]
        if t is ts.SizeRef:
            return ["size", list(obj.items)]
        if t is ts.DeviceRef:
            return ["device", obj.type, obj.index]
        if t is ts.DType:
            return ["dtype", obj.name]
        if t is ts.Layout:
            return ["layout", obj.name]
        if t is ts.QScheme:
            return ["qscheme", obj.name]
        if t is ds.NPDType:
            state = None if obj.state is None else list(obj.state)
            return ["npdtype", obj.code, obj.align, obj.copy, state]
        if t is ds.NDArray:
            if obj.dtype is None:
                raise Malformed("numpy array without state")
            offset, nbytes = self.write_region(obj.data)
            dtype = self._ref(obj.dtype)
            return [
                "ndarray",
                obj.via,
                obj.version,
                dtype,
                list(obj.shape),
                obj.fortran,
                offset,
                nbytes,
            ]
        if t is ds.NPScalar:
            data = _b64(obj.data)
            return ["npscalar", self._ref(obj.dtype), data]
        if t is ts.StorageRef:
            return ["storage", obj.index]
        name = VALUE_NAMES.get(id(obj))
        if name is not None:
            return ["global", name]
        raise Malformed(f"the pickle produced an object of a kind that is not data ({t.__name__})")


def _num(x: float) -> object:
    return x if math.isfinite(x) else repr(x)


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")
