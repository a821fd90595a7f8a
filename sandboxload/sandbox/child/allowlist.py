"""THE allowlist: every global a checkpoint's pickle may name, and the stand-in it gets.

This table is the security boundary of the unpickler: a name that is not a key here raises
:class:`errors.Refused` before anything is looked up. No value is a real module, class or
function; each is an inert stand-in (:mod:`torch_standins`, :mod:`data_standins`) that only
records validated arguments. Python 2 names are mapped by the unpickler first, as pickle's
own ``find_class`` maps them (``_compat_pickle``), without importing anything.
"""

from ..protocol import (
    DTYPE_SIZES,
    QSCHEMES,
    QUANTIZED_DTYPES,
    SPARSE_TENSOR_TYPES,
    STORAGE_DTYPES,
    VALUE_DTYPES,
)
from . import data_standins as d
from . import torch_standins as t

_TORCH_UTILS = "torch._utils"

ALLOWED: dict = {
    # containers and plain values
    ("collections", "OrderedDict"): d.make_odict,
    ("collections", "Counter"): d.make_counter,
    ("builtins", "bytearray"): d.make_bytearray,
    ("builtins", "bytes"): d.make_bytes,
    ("builtins", "set"): d.make_set,
    ("builtins", "frozenset"): d.make_frozenset,
    ("builtins", "complex"): d.make_complex,
    ("_codecs", "encode"): d.codecs_encode,  # protocol 2's spelling of bytes
    ("argparse", "Namespace"): d.NamespaceSI,
    ("copyreg", "_reconstructor"): d.copyreg_reconstructor,  # protocol 0/1 object creation
    # torch values
    ("torch", "Size"): t.make_size,
    ("torch", "device"): t.make_device,
    ("torch", "Tensor"): t.TENSOR_CLASS,
    ("torch.nn.parameter", "Parameter"): t.PARAMETER_CLASS,
    ("torch.nn", "Parameter"): t.PARAMETER_CLASS,
    ("torch.serialization", "_get_layout"): lambda name: t.Layout(str(name)),
    ("torch.storage", "UntypedStorage"): t.StorageType("uint8"),
    ("torch", "UntypedStorage"): t.StorageType("uint8"),
    # torch's rebuild functions
    ("torch._tensor", "_rebuild_from_type_v2"): t.rebuild_from_type_v2,
    (_TORCH_UTILS, "_rebuild_tensor"): t.rebuild_tensor,
    (_TORCH_UTILS, "_rebuild_tensor_v2"): t.rebuild_tensor_v2,
    (_TORCH_UTILS, "_rebuild_tensor_v3"): t.rebuild_tensor_v3,
    (_TORCH_UTILS, "_rebuild_parameter"): t.rebuild_parameter,
    (_TORCH_UTILS, "_rebuild_parameter_with_state"): t.rebuild_parameter_with_state,
    (_TORCH_UTILS, "_rebuild_meta_tensor_no_storage"): t.rebuild_meta_tensor_no_storage,
    (_TORCH_UTILS, "_rebuild_device_tensor_from_cpu_tensor"): (
        t.rebuild_device_tensor_from_cpu_tensor
    ),
    (_TORCH_UTILS, "_rebuild_device_tensor_from_numpy"): d.rebuild_device_tensor_from_numpy,
    (_TORCH_UTILS, "_rebuild_xla_tensor"): d.rebuild_device_tensor_from_numpy,
    (_TORCH_UTILS, "_rebuild_qtensor"): t.rebuild_qtensor,
    (_TORCH_UTILS, "_rebuild_sparse_tensor"): t.rebuild_sparse_tensor,
    (_TORCH_UTILS, "_rebuild_nested_tensor"): t.rebuild_nested_tensor,
    (_TORCH_UTILS, "_rebuild_wrapper_subclass"): t.rebuild_wrapper_subclass,
    # torch's default safe globals (torch.serialization.get_safe_globals()): refused, typed
    ("torch.nested._internal.nested_tensor", "_rebuild_njt"): t.rebuild_njt,
    ("torch.nested._internal.nested_tensor", "NestedTensor"): t.GlobalRef(),
    # torch admits the class, but no file can use it: a value only (see VALUE_NAMES)
    ("torch.storage", "TypedStorage"): t.GlobalRef(),
    # numpy arrays, scalars and dtypes (numpy 1.x and 2.x module names)
    ("numpy", "ndarray"): d.NDArrayType,
    ("numpy", "dtype"): d.NPDType,
    ("numpy.core.multiarray", "_reconstruct"): d.np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): d.np_reconstruct,
    ("numpy.core.multiarray", "scalar"): d.np_scalar,
    ("numpy._core.multiarray", "scalar"): d.np_scalar,
    ("numpy.core.numeric", "_frombuffer"): d.np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): d.np_frombuffer,
}
# Families generated from the contract's tables: torch.<dtype> for every dtype and
# torch.<qscheme> (as values); the legacy
# typed storages torch.<X>Storage (and torch.cuda.<X>Storage) for every storage type; and
# their torch.<X>Tensor names, which legacy tar files carry as inert type tags.
for _name in (*DTYPE_SIZES, *VALUE_DTYPES):
    ALLOWED[("torch", _name)] = t.DType(_name)
for _name in QSCHEMES:
    ALLOWED[("torch", _name)] = t.QScheme(_name)
for _name, _dtype in STORAGE_DTYPES.items():
    _tag = _name.replace("Storage", "Tensor")
    if _dtype in QUANTIZED_DTYPES:  # torch has no CUDA or tensor-type names for these
        ALLOWED[("torch", _name)] = t.StorageType(_dtype)
        continue
    for _module in ("torch", "torch.cuda"):
        ALLOWED[(_module, _name)] = t.StorageType(_dtype)
        ALLOWED[(_module, _tag)] = t.TensorTypeTag(f"{_module}.{_tag}")
    if _tag in SPARSE_TENSOR_TYPES:
        for _module in ("torch.sparse", "torch.cuda.sparse"):
            ALLOWED[(_module, _tag)] = t.TensorTypeTag(f"{_module}.{_tag}")

# A global that is itself the value (``{"cls": torch.FloatTensor}``): the stand-in's name,
# which the parent looks up in torch's own allowlist. The first name of an alias wins.
VALUE_NAMES: dict = {}
for (_module, _name), _standin in ALLOWED.items():
    if not isinstance(_standin, (t.DType, t.QScheme)):
        VALUE_NAMES.setdefault(id(_standin), f"{_module}.{_name}")


def admit_extra(dotted_names: tuple) -> None:
    """SANDBOXLOAD_ALLOW_GLOBALS: plain data classes the user named, recorded by name only
    (the parent decides whether the class may be rebuilt without running its code)."""
    for dotted in dotted_names:
        module, _, name = dotted.rpartition(".")
        if (module, name) not in ALLOWED:
            ALLOWED[(module, name)] = type(name, (d.GenericObject,), {"qualname": dotted})
