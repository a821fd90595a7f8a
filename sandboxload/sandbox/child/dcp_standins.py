"""Stand-ins for what a ``torch.distributed.checkpoint`` ``.metadata`` pickle names.

Admitted only by the READ_DCP reader (never by ``torch.load``'s): the dataclasses of the
module's fixed table, one enum of it, torch's memory formats and ``pathlib`` paths. Each
records plain fields; the parent checks every field and calls the real constructor
(``rebuild_dcp``). Nothing here is the real class.
"""

from .errors import Malformed, Unsupported, need

_METADATA = "torch.distributed.checkpoint.metadata"
_FILESYSTEM = "torch.distributed.checkpoint.filesystem"
MAX_PARTS = 4096


class Record:
    """An instance of one of the table's dataclasses: NEWOBJ with no arguments, then BUILD
    with the instance's ``__dict__`` (what pickle does for a plain dataclass)."""

    qualname = ""

    def __new__(cls, *args: object) -> "Record":
        if args:
            raise Unsupported(f"{cls.qualname} created with arguments")
        obj = super().__new__(cls)
        obj.fields = {}  # an instance with no fields pickles without BUILD
        return obj

    def __init__(self, *args: object, **kwargs: object) -> None:
        # NEWOBJ does not call __init__; a call would mean REDUCE on the class itself.
        raise Unsupported(f"a call of {self.qualname} (only its pickled instances are data)")

    def __setstate__(self, state: object) -> None:
        need(isinstance(state, dict), f"{self.qualname} state must be a dict")
        need(all(type(k) is str for k in state), f"{self.qualname} field names")
        self.fields = dict(state)


class PropertiesRecord(Record):
    """``TensorProperties`` pickles its fields as a 5-tuple (its own ``__getstate__``);
    older torch wrote the ``__dict__``."""

    def __setstate__(self, state: object) -> None:
        if isinstance(state, dict):
            super().__setstate__(state)
            return
        need(isinstance(state, tuple) and len(state) == 5, "TensorProperties state")
        names = ("dtype", "layout", "requires_grad", "memory_format", "pin_memory")
        self.fields = dict(zip(names, state, strict=True))


class EnumValue:
    """A member of the table's enum, or a torch memory format, by its value or name."""

    __slots__ = ("qualname", "value")

    def __init__(self, qualname: str, value: object) -> None:
        need(type(value) in (int, str), f"{qualname} value")
        self.qualname, self.value = qualname, value


class PathValue:
    """A ``pathlib`` path: only its parts, each a str."""

    __slots__ = ("parts",)

    def __init__(self, *parts: object) -> None:
        need(len(parts) <= MAX_PARTS, "a path of too many parts")
        need(all(type(p) is str for p in parts), "path parts must be str")
        self.parts = parts


def _record(qualname: str, base: type = Record) -> type:
    return type(qualname.rpartition(".")[2], (base,), {"qualname": qualname})


def _enum(qualname: str):  # the enum class's stand-in: REDUCE calls it with the value
    def member(value: object) -> EnumValue:
        return EnumValue(qualname, value)

    return member


def _memory_format(name: str) -> EnumValue:
    return EnumValue("torch.memory_format", name)


ALLOWED: dict = {
    (_METADATA, name): _record(f"{_METADATA}.{name}")
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
    )
}
_PROPERTIES = f"{_METADATA}.TensorProperties"
ALLOWED[(_METADATA, "TensorProperties")] = _record(_PROPERTIES, PropertiesRecord)
ALLOWED[(_FILESYSTEM, "_StorageInfo")] = _record(f"{_FILESYSTEM}._StorageInfo")
ALLOWED[(_METADATA, "_MEM_FORMAT_ENCODING")] = _enum(f"{_METADATA}._MEM_FORMAT_ENCODING")
for _name in ("contiguous_format", "channels_last", "channels_last_3d", "preserve_format"):
    ALLOWED[("torch", _name)] = _memory_format(_name)
for _module, _name in (
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib._local", "PosixPath"),  # Python 3.13's home of the class
    ("pathlib._local", "PurePosixPath"),
):
    ALLOWED[(_module, _name)] = PathValue


def check_root(root: object) -> None:
    """The stream must hold a ``Metadata`` record: anything else is not a dcp checkpoint."""
    if not (isinstance(root, Record) and root.qualname == f"{_METADATA}.Metadata"):
        raise Malformed("not torch.distributed.checkpoint metadata (no Metadata record)")
