"""The wire contract between the parent and the sandbox child. Standard library only.

Both sides import this module and nothing else of each other: the child (``child/``) is told
what to do through ``key=value`` config arguments, gets its descriptors at the fixed numbers
below, and answers with one JSON description (never pickle) on stdout:

- ``{"version", "root", "nodes", "storages"}``, or
- ``{"version", "error": {"kind", "message", ...}}`` with a kind from :data:`ERROR_KINDS`.

``storages[i]`` has the fields of :data:`STORAGE_FIELDS`: ``source`` is ``"file"`` (a byte
range of the checkpoint, mapped zero-copy), ``"memfd"`` (a range of the memfd the parent
sized and sealed) or ``"view"`` (a range of the earlier storage ``base``, as legacy checkpoints
share storage between views and their root); ``location`` is torch's location tag (``"cpu"``,
``"cuda:0"``). File and memfd ranges start on :data:`ALIGN` and never overlap: sharing exists
only where a view says so.

``nodes[i]`` is ``[kind, *fields]`` with the fields :data:`NODE_FIELDS` lists for the kind.
Fields named ``*_id`` / ``items`` / ``pairs`` / ``attrs`` hold node indices. Mutable
containers (:data:`SHELLS`) may be referenced before they appear, so cycles through them
survive; every other node may only reference lower indices or shells, so the parent builds
everything in one forward pass plus one pass to fill the shells, with no recursion.
"""

VERSION = 1

# Descriptor numbers in the child: 1 and 2 are the pipes back, 3 the checkpoint (read-only),
# 4 the memfd. The child moves what it inherits to these, so one compiled filter fits all.
CKPT_FD = 3
MEMFD_FD = 4

# Reader names: which parser the child runs (the parent maps sniffed formats onto these).
READ_ZIP = "torch-zip"
READ_LEGACY = "torch-legacy"
READ_TAR = "torch-tar"
# A bare pickle as torch.distributed.checkpoint writes its ``.metadata``: no storages, and
# the records of that module's fixed set of dataclasses besides plain data.
READ_DCP = "dcp-metadata"
READERS = (READ_ZIP, READ_LEGACY, READ_TAR, READ_DCP)

# Config keys, passed as ``key=value`` arguments (or, to a spare worker, as lines).
CONFIG_INTS = (
    "ckpt_fd",  # the inherited checkpoint descriptor (moved to CKPT_FD)
    "memfd",  # the inherited memfd (moved to MEMFD_FD)
    "size",  # the checkpoint's size in bytes
    "memfd_capacity",  # the memfd's sealed size: everything produced must fit
    "pickle_cap",  # the largest pickle record the child will decompress
    "memory_bytes",  # RLIMIT_AS
    "cpu_seconds",  # RLIMIT_CPU
    "seccomp",  # 1: install the filter from stdin; 0: the explicit, unsafe opt-out
)
CONFIG_STRS = (
    "format",  # one of READERS
    "extra_globals",  # comma-separated module.Name the user allowed as plain data classes
    "probe",  # tests and doctor: a forbidden operation to attempt after confinement
)
PROBES = ("open", "socket", "fork", "execve", "write_ckpt", "exec_memory")
# The zygote (a fork server of workers): its control socket is ``sock=N``; a worker it forks
# waits on its own socket for the config lines and the two descriptors.
ZYGOTE_ARG = "zygote=1"

# Error kinds of a failed parse.
ERR_UNSAFE_GLOBAL = "unsafe_global"  # + "module", "name": outside the allowlist
ERR_UNSUPPORTED = "unsupported"  # a legitimate construct this loader does not rebuild
ERR_MEMORY = "memory"  # the child ran out of RLIMIT_AS
ERR_MALFORMED = "malformed"  # anything else wrong with the file
ERR_SECCOMP = "seccomp_unavailable"  # the filter could not be installed
ERROR_KINDS = (ERR_UNSAFE_GLOBAL, ERR_UNSUPPORTED, ERR_MEMORY, ERR_MALFORMED, ERR_SECCOMP)

STORAGE_FIELDS = ("dtype", "nbytes", "source", "offset", "location", "base")
SOURCES = ("file", "memfd", "view")
ALIGN = 64  # torch aligns zip records to 64 bytes; the child aligns memfd ranges the same

# Node kind -> its fields after the kind.
NODE_FIELDS = {
    "none": (),
    "bool": ("value",),
    "int": ("value",),
    "float": ("value",),  # a number, or "nan" / "inf" / "-inf"
    "str": ("value",),
    "bytes": ("base64",),
    "bytearray": ("base64",),
    "complex": ("real", "imag"),
    "list": ("items",),
    "tuple": ("items",),
    "set": ("items",),
    "frozenset": ("items",),
    "dict": ("pairs",),
    "odict": ("pairs", "attrs"),
    "counter": ("pairs",),
    "namespace": ("attrs",),
    "object": ("class_name", "attrs"),
    "tensor": (
        "storage_index",
        "offset",
        "size",
        "stride",
        "requires_grad",
        "dtype",
        "metadata",
        "attrs",
    ),
    "qtensor": (
        "storage_index",
        "offset",
        "size",
        "stride",
        "requires_grad",
        "qparams_id",
        "attrs",
    ),
    "sparse": ("layout", "data_id", "attrs"),
    "nested": ("items", "attrs"),  # buffer, sizes, strides, storage offsets
    "storage": ("storage_index",),  # a storage as a value (torch returns a TypedStorage)
    "global": ("name",),  # a class or function torch's allowlist admits, as a value
    "meta_tensor": ("dtype", "size", "stride", "requires_grad"),
    "param": ("tensor_id", "requires_grad", "attrs"),
    "device_tensor": ("data_id", "dtype", "device", "requires_grad"),
    "size": ("ints",),
    "device": ("type", "index"),
    "dtype": ("name",),
    "qscheme": ("name",),
    "layout": ("name",),
    "ndarray": ("via", "version", "dtype_id", "shape", "fortran", "offset", "nbytes"),
    "npscalar": ("dtype_id", "base64"),
    "npdtype": ("code", "align", "copy", "state"),
    # READ_DCP only: a dataclass of torch.distributed.checkpoint's fixed table, its enum
    # members and the paths it records, named by the table's own names.
    "record": ("class_name", "attrs"),
    "enum": ("class_name", "value"),
    "path": ("parts",),
}
SHELLS = frozenset({"list", "dict", "odict", "counter", "namespace", "object"})
NDARRAY_VIA = ("reconstruct", "frombuffer")
TENSOR_METADATA_KEYS = ("conj", "neg")

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
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
}  # fmt: skip
# Quantized dtypes: their storages hold only quantized tensors ("qtensor" nodes).
QUANTIZED_DTYPES = ("qint8", "quint8", "qint32", "quint4x2", "quint2x4")
# Packed quantized dtypes: elements per byte (their tensors are contiguous runs of bytes).
PACKED_DTYPES = {"quint4x2": 2, "quint2x4": 4}

# Dtypes torch's allowlist admits as values (a config naming one) that no storage holds:
# the sub-byte integers.
VALUE_DTYPES = (*(f"int{n}" for n in range(1, 8)), *(f"uint{n}" for n in range(1, 8)))
# Quantization schemes torch's allowlist admits as values.
QSCHEMES = (
    "per_tensor_affine", "per_channel_affine", "per_tensor_symmetric",
    "per_channel_symmetric", "per_channel_affine_float_qparams",
)  # fmt: skip

# Legacy typed storage class name -> dtype name ("UntypedStorage" holds bytes).
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
    "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
}  # fmt: skip
# Legacy tensor types torch also names under torch.sparse / torch.cuda.sparse (labels only).
SPARSE_TENSOR_TYPES = (
    "DoubleTensor", "FloatTensor", "HalfTensor", "BFloat16Tensor", "LongTensor",
    "IntTensor", "ShortTensor", "CharTensor", "ByteTensor",
)  # fmt: skip
