"""The child's restricted unpickler: every global resolves to an inert stand-in.

Nothing a pickle names is imported or called. ``find_class`` looks the name up in a fixed
table of stand-ins (plain classes and functions defined here that only record their
arguments); any other name raises :class:`Refused`. The stand-ins validate argument types
and build a graph that :mod:`protocol` encoding turns into the JSON description.
Runs in the child: standard library only.
"""

import _compat_pickle
import _pickle  # the C unpickler alone: "pickle" would also import re, functools...


class Refused(Exception):
    """A global outside the allowlist."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


class Malformed(Exception):
    """The checkpoint's structure is not what the format requires."""


class Unsupported(Exception):
    """A legitimate construct this loader does not rebuild (say which)."""


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise Malformed(what)


def _ints(value: object, what: str) -> tuple:
    _need(isinstance(value, (tuple, list, SizeRef)), f"{what} must be a sequence of ints")
    items = value.items if isinstance(value, SizeRef) else tuple(value)
    _need(all(type(v) is int for v in items), f"{what} must be a sequence of ints")
    return items


# --- stand-ins -------------------------------------------------------------------------


class StorageRef:
    """A storage the reader registered; ``index`` points into the description's storages."""

    __slots__ = ("dtype", "index", "nbytes")

    def __init__(self, index: int, dtype: str, nbytes: int) -> None:
        self.index = index
        self.dtype = dtype
        self.nbytes = nbytes


class StorageType:
    __slots__ = ("dtype",)

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


class TensorTypeTag:
    """torch.FloatTensor and friends: only ever a label in legacy files."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class DType:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Layout:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class SizeRef:
    __slots__ = ("items",)

    def __init__(self, items: tuple) -> None:
        self.items = items


class DeviceRef:
    __slots__ = ("index", "type")

    def __init__(self, type_: str, index: "int | None") -> None:
        self.type = type_
        self.index = index


class TensorRef:
    __slots__ = (
        "attrs",
        "dtype",
        "metadata",
        "offset",
        "requires_grad",
        "size",
        "storage",
        "stride",
    )

    def __init__(
        self,
        storage: StorageRef,
        offset: int,
        size: tuple,
        stride: tuple,
        requires_grad: bool,
        dtype: str,
        metadata: dict,
    ) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride
        self.requires_grad = requires_grad
        self.dtype = dtype
        self.metadata = metadata
        self.attrs: dict = {}


class MetaTensorRef:
    __slots__ = ("dtype", "requires_grad", "size", "stride")

    def __init__(self, dtype: str, size: tuple, stride: tuple, requires_grad: bool) -> None:
        self.dtype = dtype
        self.size = size
        self.stride = stride
        self.requires_grad = requires_grad


class DeviceTensorRef:
    __slots__ = ("data", "device", "dtype", "requires_grad")

    def __init__(self, data: object, dtype: str, device: str, requires_grad: bool) -> None:
        self.data = data
        self.dtype = dtype
        self.device = device
        self.requires_grad = requires_grad


class ParamRef:
    __slots__ = ("attrs", "data", "requires_grad")

    def __init__(self, data: object, requires_grad: bool) -> None:
        self.data = data
        self.requires_grad = requires_grad
        self.attrs: dict = {}


class ODict(dict):
    """collections.OrderedDict; attributes (a state dict's ``_metadata``) land in __dict__."""


class CounterSI(dict):
    """collections.Counter."""


class NamespaceSI:
    """argparse.Namespace: built by NEWOBJ, filled by BUILD."""

    def __init__(self) -> None:
        pass


class GenericObject:
    """An instance of a class the user allowed (SANDBOXLOAD_ALLOW_GLOBALS): NEWOBJ + BUILD."""

    qualname = ""

    def __init__(self) -> None:
        pass


class NPDType:
    """numpy.dtype(code, align, copy) plus its BUILD state, kept as plain data."""

    __slots__ = ("align", "code", "copy", "state")

    def __init__(self, code: object, align: object = False, copy: object = False) -> None:
        _need(isinstance(code, str) and len(code) <= 8, "numpy dtype code must be a short str")
        _need(type(align) is bool and type(copy) is bool, "numpy dtype flags")
        self.code, self.align, self.copy = code, align, copy
        self.state: tuple | None = None

    def __setstate__(self, state: object) -> None:
        _need(isinstance(state, tuple) and 0 < len(state) <= 9, "numpy dtype state")
        if any(x is not None for x in state[2:5]):
            raise Unsupported("structured or sub-array numpy dtypes")
        _need(all(x is None or type(x) in (int, str) for x in state), "numpy dtype state")
        self.state = state


class NDArrayType:
    """Stand-in for the class ``numpy.ndarray`` (only ever passed to ``_reconstruct``)."""


class NDArray:
    """An ndarray as numpy pickles it: built by ``_reconstruct`` then ``__setstate__``, or by
    ``_frombuffer``; the parent replays the same numpy calls on validated plain values."""

    __slots__ = ("data", "dtype", "fortran", "shape", "version", "via")

    def __init__(self) -> None:
        self.via = "reconstruct"
        self.version = 1
        self.shape: tuple = ()
        self.dtype: NPDType | None = None
        self.fortran = False
        self.data = b""

    def __setstate__(self, state: object) -> None:
        _need(isinstance(state, tuple) and len(state) == 5, "numpy array state")
        version, shape, dtype, fortran, data = state
        _need(type(version) is int and isinstance(dtype, NPDType), "numpy array dtype")
        _need(
            isinstance(data, (bytes, bytearray)),
            "numpy array data must be bytes (object arrays are refused)",
        )
        self.version = version
        self.shape = _ints(shape, "numpy array shape")
        self.dtype = dtype
        self.fortran = bool(fortran)
        self.data = bytes(data)


class NPScalar:
    __slots__ = ("data", "dtype")

    def __init__(self, dtype: NPDType, data: bytes) -> None:
        self.dtype = dtype
        self.data = data


# --- stand-in functions ------------------------------------------------------------------


def _hooks_empty(hooks: object) -> None:
    _need(
        hooks is None or (isinstance(hooks, dict) and not hooks),
        "tensor backward hooks must be empty",
    )


def _metadata(value: object) -> dict:
    if value is None:
        return {}
    _need(
        isinstance(value, dict)
        and all(k in ("conj", "neg") and type(v) is bool for k, v in value.items()),
        "tensor metadata",
    )
    return dict(value)


def _tensor(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    dtype: "str | None",
    metadata: object,
) -> TensorRef:
    _need(isinstance(storage, StorageRef), "tensor storage must be a storage reference")
    _need(type(offset) is int, "tensor storage offset must be an int")
    _need(type(requires_grad) is bool, "requires_grad must be a bool")
    return TensorRef(
        storage,
        offset,
        _ints(size, "tensor size"),
        _ints(stride, "tensor stride"),
        requires_grad,
        dtype or storage.dtype,
        _metadata(metadata),
    )


def rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride, False, None, None)


def rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
):
    _hooks_empty(backward_hooks)
    return _tensor(storage, storage_offset, size, stride, requires_grad, None, metadata)


def rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    _hooks_empty(backward_hooks)
    _need(isinstance(dtype, DType), "tensor dtype")
    return _tensor(storage, storage_offset, size, stride, requires_grad, dtype.name, metadata)


def rebuild_parameter(data, requires_grad, backward_hooks):
    _hooks_empty(backward_hooks)
    _need(isinstance(data, (TensorRef, MetaTensorRef, DeviceTensorRef)), "parameter data")
    _need(type(requires_grad) is bool, "requires_grad must be a bool")
    return ParamRef(data, requires_grad)


def rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    param = rebuild_parameter(data, requires_grad, backward_hooks)
    param.attrs = _obj_state(state)
    return param


def _obj_state(state: object) -> dict:
    """torch._utils._set_obj_state's input: a dict, or (dict, slots dict)."""
    if isinstance(state, tuple):
        _need(len(state) == 2, "object state must be a pair")
        merged: dict = {}
        for part in state:
            _need(part is None or isinstance(part, dict), "object state")
            merged.update(part or {})
        state = merged
    _need(state is None or isinstance(state, dict), "object state")
    attrs = dict(state or {})
    _need(
        all(isinstance(k, str) and k.isidentifier() and not k.startswith("__") for k in attrs),
        "attribute names must be plain identifiers",
    )
    return attrs


class _TensorClass:
    """Stand-in for torch.Tensor / torch.nn.Parameter used as ``new_type``."""

    def __init__(self, name: str) -> None:
        self.name = name


TENSOR_CLASS = _TensorClass("Tensor")
PARAMETER_CLASS = _TensorClass("Parameter")


def rebuild_from_type_v2(func, new_type, args, state):
    _need(callable(func) and func in REBUILDERS, "rebuild function")
    _need(isinstance(args, tuple), "rebuild arguments")
    _need(new_type in (TENSOR_CLASS, PARAMETER_CLASS), "tensor subclass")
    result = func(*args)
    if new_type is PARAMETER_CLASS and not isinstance(result, ParamRef):
        result = ParamRef(result, True)
    _need(isinstance(result, (TensorRef, ParamRef)), "rebuilt tensor")
    result.attrs.update(_obj_state(state))
    return result


def rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad):
    _need(isinstance(dtype, DType) and type(requires_grad) is bool, "meta tensor")
    return MetaTensorRef(dtype.name, _ints(size, "size"), _ints(stride, "stride"), requires_grad)


def rebuild_device_tensor_from_cpu_tensor(data, dtype, device, requires_grad):
    _need(isinstance(data, TensorRef) and isinstance(dtype, DType), "device tensor")
    _need(isinstance(device, str) and type(requires_grad) is bool, "device tensor")
    return DeviceTensorRef(data, dtype.name, device, requires_grad)


def rebuild_device_tensor_from_numpy(data, dtype, device, requires_grad):
    _need(isinstance(data, NDArray) and isinstance(dtype, DType), "device tensor")
    _need(isinstance(device, str) and type(requires_grad) is bool, "device tensor")
    return DeviceTensorRef(data, dtype.name, device, requires_grad)


def _unsupported(what: str):
    def stand_in(*_args: object) -> None:
        raise Unsupported(what)

    return stand_in


def make_size(items=()):
    return SizeRef(_ints(items, "torch.Size"))


def make_device(type_, index=None):
    _need(isinstance(type_, str) and len(type_) < 64, "torch.device type")
    _need(index is None or type(index) is int, "torch.device index")
    return DeviceRef(type_, index)


def codecs_encode(obj, encoding="utf-8", errors="strict"):
    """How protocol-2 pickles spell bytes: _codecs.encode(str, 'latin1')."""
    _need(
        isinstance(obj, str) and encoding in ("latin1", "latin-1") and errors == "strict",
        "_codecs.encode is only accepted for latin1 text (pickled bytes)",
    )
    return obj.encode("latin1")


def make_bytearray(data=b""):
    _need(isinstance(data, (bytes, bytearray)), "bytearray takes bytes here")
    return bytearray(data)


def make_bytes(data=b""):
    """Protocol 2 spells empty bytes as builtins.bytes()."""
    _need(isinstance(data, (bytes, bytearray)), "bytes takes bytes here")
    return bytes(data)


def make_set(items=()):
    _need(isinstance(items, (list, tuple)), "set takes a list")
    return set(items)


def make_frozenset(items=()):
    _need(isinstance(items, (list, tuple)), "frozenset takes a list")
    return frozenset(items)


def make_complex(real=0.0, imag=0.0):
    _need(type(real) in (int, float) and type(imag) in (int, float), "complex takes numbers")
    return complex(real, imag)


def make_odict(items=None):
    out = ODict()
    if items is not None:
        _need(isinstance(items, (list, tuple)), "OrderedDict items")
        for pair in items:
            _need(isinstance(pair, (list, tuple)) and len(pair) == 2, "OrderedDict item")
            out[pair[0]] = pair[1]
    return out


def make_counter(mapping=None):
    out = CounterSI()
    if mapping is not None:
        _need(isinstance(mapping, dict), "Counter takes a dict")
        out.update(mapping)
    return out


def np_reconstruct(cls, shape, dtype_code):
    _need(cls is NDArrayType, "numpy _reconstruct only builds ndarray")
    return NDArray()


def np_scalar(dtype, data=None):
    _need(isinstance(dtype, NPDType) and isinstance(data, bytes), "numpy scalar")
    return NPScalar(dtype, data)


def np_frombuffer(buf, dtype, shape, order):
    _need(isinstance(buf, (bytes, bytearray)) and isinstance(dtype, NPDType), "numpy buffer")
    _need(order in ("C", "F"), "numpy order")
    arr = NDArray()
    arr.via = "frombuffer"
    arr.shape = _ints(shape, "numpy shape")
    arr.dtype = dtype
    arr.fortran = order == "F"
    arr.data = bytes(buf)
    return arr


def copyreg_reconstructor(cls, base, state):
    """Protocol 0/1 spelling of ``cls.__new__(cls)``, only for stand-in classes."""
    _need(base is object and state is None, "copyreg._reconstructor base")
    _need(
        isinstance(cls, type) and issubclass(cls, (NamespaceSI, GenericObject)),
        "copyreg._reconstructor class",
    )
    return cls.__new__(cls)


REBUILDERS = {
    rebuild_tensor,
    rebuild_tensor_v2,
    rebuild_tensor_v3,
    rebuild_parameter,
    rebuild_parameter_with_state,
    rebuild_meta_tensor_no_storage,
    rebuild_device_tensor_from_cpu_tensor,
    rebuild_device_tensor_from_numpy,
}


def _build_allowlist() -> dict:
    table: dict = {
        ("collections", "OrderedDict"): make_odict,
        ("collections", "Counter"): make_counter,
        ("torch", "Size"): make_size,
        ("torch", "device"): make_device,
        ("torch", "Tensor"): TENSOR_CLASS,
        ("torch.nn.parameter", "Parameter"): PARAMETER_CLASS,
        ("torch.nn", "Parameter"): PARAMETER_CLASS,
        ("_codecs", "encode"): codecs_encode,
        ("builtins", "bytearray"): make_bytearray,
        ("builtins", "bytes"): make_bytes,
        ("builtins", "set"): make_set,
        ("builtins", "frozenset"): make_frozenset,
        ("builtins", "complex"): make_complex,
        ("argparse", "Namespace"): NamespaceSI,
        ("copyreg", "_reconstructor"): copyreg_reconstructor,
        ("torch._tensor", "_rebuild_from_type_v2"): rebuild_from_type_v2,
        ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter_with_state,
        ("torch._utils", "_rebuild_meta_tensor_no_storage"): rebuild_meta_tensor_no_storage,
        (
            "torch._utils",
            "_rebuild_device_tensor_from_cpu_tensor",
        ): rebuild_device_tensor_from_cpu_tensor,
        ("torch._utils", "_rebuild_device_tensor_from_numpy"): rebuild_device_tensor_from_numpy,
        ("torch._utils", "_rebuild_xla_tensor"): rebuild_device_tensor_from_numpy,
        ("torch.serialization", "_get_layout"): lambda name: Layout(str(name)),
    }
    for fn in (
        "_rebuild_qtensor",
        "_rebuild_sparse_tensor",
        "_rebuild_nested_tensor",
        "_rebuild_wrapper_subclass",
    ):
        table[("torch._utils", fn)] = _unsupported(
            f"torch._utils.{fn} (quantized, sparse, nested or subclass tensors)"
        )
    for name, dtype in {**STORAGE_TYPES_BY_NAME}.items():
        table[("torch", name)] = StorageType(dtype)
        table[("torch.cuda", name)] = StorageType(dtype)
    # Legacy tensor type names (torch.FloatTensor...) appear as inert type tags in tar files.
    for name in STORAGE_TYPES_BY_NAME:
        tag = name.replace("Storage", "Tensor")
        table[("torch", tag)] = TensorTypeTag(tag)
        table[("torch.cuda", tag)] = TensorTypeTag(tag)
    table[("torch.storage", "UntypedStorage")] = StorageType("uint8")
    table[("torch", "UntypedStorage")] = StorageType("uint8")
    for name in DTYPE_NAMES:
        table[("torch", name)] = DType(name)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = np_reconstruct
        table[(mod, "scalar")] = np_scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = np_frombuffer
    table[("numpy", "ndarray")] = NDArrayType
    table[("numpy", "dtype")] = NPDType
    return table


STORAGE_TYPES_BY_NAME: dict = {}
DTYPE_NAMES: tuple = ()
ALLOWED: dict = {}


def configure(storage_dtypes: dict, dtype_names: tuple, extra_globals: tuple) -> None:
    """Fill the allowlist (the tables live in :mod:`protocol`, passed in by the worker)."""
    global STORAGE_TYPES_BY_NAME, DTYPE_NAMES
    STORAGE_TYPES_BY_NAME = dict(storage_dtypes)
    DTYPE_NAMES = tuple(dtype_names)
    ALLOWED.clear()
    ALLOWED.update(_build_allowlist())
    for dotted in extra_globals:
        module, _, name = dotted.rpartition(".")
        if (module, name) not in ALLOWED:
            ALLOWED[(module, name)] = type(name, (GenericObject,), {"qualname": dotted})


class RestrictedUnpickler(_pickle.Unpickler):
    """pickle.Unpickler whose globals are the stand-ins above; nothing else resolves."""

    def __init__(self, file, persistent_load=None) -> None:
        # torch.load decodes Python 2 strings as utf-8; so does this.
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> object:
        # Python 2 names, as pickle's own find_class maps them (never imports).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise Refused(str(module), str(name)) from None

    def persistent_load(self, pid: object) -> object:
        if self._persistent is None:
            raise Malformed("persistent id in a pickle that may not have any")
        return self._persistent(pid)
