"""The description the child sends back: JSON, never pickle. Shared by both sides (stdlib only).

A description is ``{"version", "root", "nodes", "storages"}`` or ``{"version", "error"}``.

``storages[i]`` is ``[dtype, nbytes, source, offset, location]``: ``source`` is ``"file"``
(a byte range of the checkpoint, mapped zero-copy) or ``"memfd"`` (a range of the memfd the
parent sized and sealed); ``location`` is torch's location tag (``"cpu"``, ``"cuda:0"``).

``nodes[i]`` is ``[kind, ...]``. Children are node indices. Mutable containers (``SHELLS``)
may be referenced before they appear, so cycles through them survive; every other node may
only reference lower indices or shells, so the parent builds everything in one forward pass
plus one pass to fill the shells, with no recursion.
"""

VERSION = 1

# torch dtype name -> item size in bytes. Sub-byte packed dtypes count one byte per element,
# as torch stores them.
DTYPE_SIZES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
    "uint16": 2, "uint32": 4, "uint64": 8,
    "complex32": 4, "complex64": 8, "complex128": 16,
    "float8_e5m2": 1, "float8_e4m3fn": 1, "float8_e5m2fnuz": 1, "float8_e4m3fnuz": 1,
    "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1,
    "bits8": 1, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
}  # fmt: skip

# Legacy typed storage class name -> dtype name ("UntypedStorage" holds bytes).
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}  # fmt: skip


SHELLS = frozenset({"list", "dict", "odict", "counter", "namespace", "object"})

# Node kinds and their fields after the kind:
#   none | bool b | int i | float f | str s | bytes b64 | bytearray b64 | complex re im
#   list [ids] | tuple [ids] | set [ids] | frozenset [ids]
#   dict [[k, v]...] | odict [[k, v]...] {attr: id} | counter [[k, v]...]
#   namespace {attr: id} | object "module.Name" {attr: id}
#   tensor storage offset [size] [stride] requires_grad dtype metadata {attr: id}
#   meta_tensor dtype [size] [stride] requires_grad
#   param tensor_id requires_grad {attr: id}
#   device_tensor tensor_id dtype device requires_grad
#   size [ints] | device "type" index | dtype "name" | layout "name"
#   ndarray descr [shape] fortran source offset nbytes | npscalar descr b64 | npdtype descr
