"""Stand-ins for torch's globals: storages, dtypes, sizes, devices, and the rebuild functions.

Each records validated arguments; the parent rebuilds the real objects from the description.
"""

from .errors import Unsupported, need


def ints(value: object, what: str) -> tuple:
    need(isinstance(value, (tuple, list, SizeRef)), f"{what} must be a sequence of ints")
    items = value.items if isinstance(value, SizeRef) else tuple(value)
    need(all(type(v) is int for v in items), f"{what} must be a sequence of ints")
    return items


# --- classes -------------------------------------------------------------------------


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


class GlobalRef:
    """A global torch admits that only ever appears as a value (no file can call it)."""

    __slots__ = ()


class DType:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Layout:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class QScheme:
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


class QTensorRef:
    """A quantized tensor: a view of a quantized storage plus its quantizer parameters."""

    __slots__ = ("attrs", "offset", "qparams", "requires_grad", "size", "storage", "stride")

    def __init__(
        self, storage: StorageRef, offset: int, size: tuple, stride: tuple, qparams: tuple, rg: bool
    ) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride
        self.qparams = qparams
        self.requires_grad = rg
        self.attrs: dict = {}


class SparseRef:
    """A sparse tensor: its layout and the tuple of tensors and size torch saved."""

    __slots__ = ("attrs", "data", "layout")

    def __init__(self, layout: str, data: tuple) -> None:
        self.layout = layout
        self.data = data
        self.attrs: dict = {}


class NestedRef:
    """A strided nested tensor: a buffer and the per-component sizes, strides and offsets."""

    __slots__ = ("attrs", "parts")

    def __init__(self, parts: tuple) -> None:
        self.parts = parts
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


def _hooks_empty(hooks: object) -> None:
    need(
        hooks is None or (isinstance(hooks, dict) and not hooks),
        "tensor backward hooks must be empty",
    )


def _metadata(value: object) -> dict:
    if value is None:
        return {}
    need(
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
    need(isinstance(storage, StorageRef), "tensor storage must be a storage reference")
    need(type(offset) is int, "tensor storage offset must be an int")
    need(type(requires_grad) is bool, "requires_grad must be a bool")
    return TensorRef(
        storage,
        offset,
        ints(size, "tensor size"),
        ints(stride, "tensor stride"),
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
    need(isinstance(dtype, DType), "tensor dtype")
    return _tensor(storage, storage_offset, size, stride, requires_grad, dtype.name, metadata)


def rebuild_qtensor(
    storage, storage_offset, size, stride, quantizer_params, requires_grad, backward_hooks
):
    _hooks_empty(backward_hooks)
    need(isinstance(storage, StorageRef), "quantized tensor storage")
    need(type(storage_offset) is int and type(requires_grad) is bool, "quantized tensor")
    need(
        type(quantizer_params) is tuple
        and len(quantizer_params) in (3, 4)
        and isinstance(quantizer_params[0], QScheme),
        "quantizer parameters",
    )
    size, stride = ints(size, "tensor size"), ints(stride, "tensor stride")
    return QTensorRef(storage, storage_offset, size, stride, quantizer_params, requires_grad)


def rebuild_sparse_tensor(layout, data):
    need(isinstance(layout, Layout), "sparse layout")
    need(type(data) is tuple and len(data) in (3, 4), "sparse tensor data")
    return SparseRef(layout.name, data)


def rebuild_nested_tensor(buffer, sizes, strides, storage_offsets):
    parts = (buffer, sizes, strides, storage_offsets)
    need(all(isinstance(p, TensorRef) for p in parts), "nested tensor parts must be tensors")
    return NestedRef(parts)


def rebuild_parameter(data, requires_grad, backward_hooks):
    _hooks_empty(backward_hooks)
    need(
        isinstance(data, (TensorRef, MetaTensorRef, DeviceTensorRef, *OTHER_TENSORS)),
        "parameter data",
    )
    need(type(requires_grad) is bool, "requires_grad must be a bool")
    return ParamRef(data, requires_grad)


def rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    param = rebuild_parameter(data, requires_grad, backward_hooks)
    param.attrs = _obj_state(state)
    return param


def _obj_state(state: object) -> dict:
    """torch._utils._set_obj_state's input: a dict, or (dict, slots dict)."""
    if isinstance(state, tuple):
        need(len(state) == 2, "object state must be a pair")
        merged: dict = {}
        for part in state:
            need(part is None or isinstance(part, dict), "object state")
            merged.update(part or {})
        state = merged
    need(state is None or isinstance(state, dict), "object state")
    attrs = dict(state or {})
    need(
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
    need(callable(func) and func in REBUILDERS, "rebuild function")
    need(isinstance(args, tuple), "rebuild arguments")
    need(new_type in (TENSOR_CLASS, PARAMETER_CLASS), "tensor subclass")
    result = func(*args)
    if new_type is PARAMETER_CLASS and not isinstance(result, ParamRef):
        # torch: ``result.as_subclass(Parameter)``, which keeps requires_grad as it was
        result = ParamRef(result, getattr(result, "requires_grad", False))
    need(isinstance(result, (TensorRef, ParamRef, *OTHER_TENSORS)), "rebuilt tensor")
    result.attrs.update(_obj_state(state))
    return result


def rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad):
    need(isinstance(dtype, DType) and type(requires_grad) is bool, "meta tensor")
    return MetaTensorRef(dtype.name, ints(size, "size"), ints(stride, "stride"), requires_grad)


def rebuild_device_tensor_from_cpu_tensor(data, dtype, device, requires_grad):
    need(isinstance(data, TensorRef) and isinstance(dtype, DType), "device tensor")
    need(isinstance(device, str) and type(requires_grad) is bool, "device tensor")
    return DeviceTensorRef(data, dtype.name, device, requires_grad)


def rebuild_njt(*_args: object) -> None:
    """torch's default safe globals admit jagged nested tensors; rebuilding one means running
    NestedTensor's constructor on offsets nothing has checked, so they are refused."""
    raise Unsupported(
        "jagged nested tensors (layout=torch.jagged); save their values and offsets instead"
    )


def rebuild_wrapper_subclass(cls, *_args: object) -> None:
    """torch rebuilds a storage-less tensor subclass here; no class the allowlist admits is
    one (torch itself fails on ``torch.Tensor``: it defines no ``__torch_dispatch__``)."""
    raise Unsupported("tensor subclasses without storage (torch._utils._rebuild_wrapper_subclass)")


def make_size(items=()):
    return SizeRef(ints(items, "torch.Size"))


def make_device(type_, index=None):
    need(isinstance(type_, str) and len(type_) < 64, "torch.device type")
    need(index is None or type(index) is int, "torch.device index")
    return DeviceRef(type_, index)


OTHER_TENSORS = (QTensorRef, SparseRef, NestedRef)

REBUILDERS = {
    rebuild_qtensor,
    rebuild_sparse_tensor,
    rebuild_nested_tensor,
    rebuild_tensor,
    rebuild_tensor_v2,
    rebuild_tensor_v3,
    rebuild_parameter,
    rebuild_parameter_with_state,
    rebuild_meta_tensor_no_storage,
    rebuild_device_tensor_from_cpu_tensor,
}
