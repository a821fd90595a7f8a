"""torch.distributed.checkpoint's metadata records, rebuilt from checked fields (parent side).

A fixed table: the file names one of its classes, the table decides what that name means,
each field is checked against it, and the class is made by its own constructor (plain
dataclass ``__init__`` of torch's code, never anything the file chose). Containers a record
holds are filled after the records are made (they may be shells), so their contents are
checked at the end of the build (:meth:`Records.finish`).
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable
from typing import Any

import torch

from .validate import Invalid, check

_METADATA = "torch.distributed.checkpoint.metadata"
_MEM_FORMAT_ENCODING = f"{_METADATA}._MEM_FORMAT_ENCODING"
MAX_NAME = 1 << 16  # a fully qualified name or file name, in characters
MAX_PATH = 64  # elements of one planner_data path (dcp joins every prefix of it)
# Pairs of chunks compared to prove a tensor's chunks disjoint, for the whole file.
MAX_CHUNK_COMPARISONS = 1 << 22
_MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "channels_last_3d": torch.channels_last_3d,
    "preserve_format": torch.preserve_format,
}
# _MEM_FORMAT_ENCODING's values (torch writes the enum member, by value).
_ENCODED_FORMATS = {0: torch.contiguous_format, 1: torch.channels_last, 2: torch.preserve_format}


def _opt(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return (*kinds, type(None))


def _name(value: Any, what: str) -> None:
    check(type(value) is str and len(value) <= MAX_NAME and "\0" not in value, what)


def _relative_file(value: Any) -> None:
    """A data file's name, joined to the checkpoint's folder by dcp: it must stay inside."""
    _name(value, "_StorageInfo.relative_path")
    parts = pathlib.PurePosixPath(value).parts
    check(
        bool(parts) and not value.startswith("/") and ".." not in parts,
        f"_StorageInfo.relative_path {value[:200]!r} leaves the checkpoint folder",
    )


def _overlap(a: Any, b: Any) -> bool:
    return all(
        oa < ob + nb and ob < oa + na
        for oa, na, ob, nb in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
    )


def _planner_data(data: Any, entries: int) -> None:
    """What dcp's flattening writes: each flattened name -> its path in the caller's state
    dict (str keys, list indices). dcp walks these paths in the caller's dict, growing lists
    to an index and hashing each element: short, flat, and indices below the number of
    entries (a list's elements are entries of their own)."""
    if data is None:
        return
    check(isinstance(data, dict), "planner_data must be a dict")
    for key, path in data.items():
        _name(key, "planner_data key")
        check(type(path) is tuple and 0 < len(path) <= MAX_PATH, "planner_data path")
        check(type(path[0]) is str, "planner_data path")
        for part in path:
            if type(part) is int:
                check(0 <= part < entries, "planner_data list index")
            else:
                _name(part, "planner_data path element")


class Records:
    """Makes the records of one description; :meth:`finish` checks what they contain."""

    def __init__(self, surrogates: dict[type, Callable[[Any], Any]]) -> None:
        from torch.distributed.checkpoint import filesystem, metadata

        # A MetadataIndex key hashes as (fqn, offset): the budget measures it as that tuple.
        surrogates[metadata.MetadataIndex] = lambda key: (key.fqn, key.offset)

        self.m, self.fs = metadata, filesystem
        self.deferred: list[Callable[[], None]] = []
        self.comparisons = 0
        m = metadata
        # class name -> (class, {field: allowed types}); required fields have no default.
        self.table: dict[str, tuple[type, dict[str, tuple[type, ...]], frozenset[str]]] = {
            f"{_METADATA}.Metadata": (
                m.Metadata,
                {
                    "state_dict_metadata": (dict,),
                    "planner_data": (object,),  # plain data, whatever the planner kept
                    "storage_data": _opt(dict),
                    "storage_meta": _opt(m.StorageMeta),
                    "version": _opt(str),
                },
                frozenset({"state_dict_metadata"}),
            ),
            f"{_METADATA}.TensorStorageMetadata": (
                m.TensorStorageMetadata,
                {
                    "properties": (m.TensorProperties,),
                    "size": (torch.Size,),
                    "chunks": (list,),
                },
                frozenset({"properties", "size", "chunks"}),
            ),
            f"{_METADATA}.BytesStorageMetadata": (m.BytesStorageMetadata, {}, frozenset()),
            f"{_METADATA}.ChunkStorageMetadata": (
                m.ChunkStorageMetadata,
                {"offsets": (torch.Size,), "sizes": (torch.Size,)},
                frozenset({"offsets", "sizes"}),
            ),
            f"{_METADATA}.TensorProperties": (
                m.TensorProperties,
                {
                    "dtype": (torch.dtype,),
                    "layout": (torch.layout,),
                    "requires_grad": (bool,),
                    "memory_format": (torch.memory_format,),
                    "pin_memory": (bool,),
                },
                frozenset(),
            ),
            f"{_METADATA}.MetadataIndex": (
                m.MetadataIndex,
                {"fqn": (str,), "offset": _opt(torch.Size), "index": _opt(int)},
                frozenset({"fqn"}),
            ),
            f"{_METADATA}.StorageMeta": (
                m.StorageMeta,
                {
                    "checkpoint_id": _opt((str, pathlib.PurePosixPath)),
                    "save_id": _opt(str),
                    "load_id": _opt(str),
                    "modules": (list,),
                },
                frozenset(),
            ),
            "torch.distributed.checkpoint.filesystem._StorageInfo": (
                filesystem._StorageInfo,
                {
                    "relative_path": (str,),
                    "offset": (int,),
                    "length": (int,),
                    "transform_descriptors": _opt((list, tuple)),
                },
                frozenset({"relative_path", "offset", "length"}),
            ),
        }

    def record(self, qualname: Any, fields: dict[str, Any]) -> Any:
        check(qualname in self.table, "record class")
        cls, spec, required = self.table[qualname]
        short = qualname.rpartition(".")[2]
        unknown = set(fields) - set(spec)
        if unknown:
            raise Invalid(f"{short} has no field {sorted(unknown)[0][:100]!r}")
        check(required <= set(fields), f"{short} lacks a required field")
        for key, value in fields.items():
            kinds = spec[key]
            ok = object in kinds or isinstance(value, kinds)
            if type(value) is bool:  # a bool is an int to isinstance, never to a field
                ok = ok and (bool in kinds or object in kinds)
            check(ok, f"{short}.{key}")
        self._scalars(short, fields)
        try:
            obj = cls(**fields)
        except (TypeError, ValueError) as exc:
            raise Invalid(f"{short}: {exc}") from None
        self.deferred.append(lambda: self._contents(short, obj))
        return obj

    @staticmethod
    def _scalars(short: str, fields: dict[str, Any]) -> None:
        if short == "_StorageInfo":
            _relative_file(fields["relative_path"])
            check(fields["offset"] >= 0 and fields["length"] >= 0, "_StorageInfo range")
        elif short == "MetadataIndex":
            _name(fields["fqn"], "MetadataIndex.fqn")
            index = fields.get("index")
            check(index is None or index >= 0, "MetadataIndex.index")
        elif short == "ChunkStorageMetadata":
            check(len(fields["offsets"]) == len(fields["sizes"]), "chunk rank")

    def _contents(self, short: str, obj: Any) -> None:
        """What a record's containers hold, once every container is filled."""
        m = self.m
        if short == "Metadata":
            for k, v in obj.state_dict_metadata.items():
                _name(k, "state_dict_metadata key")
                check(
                    isinstance(v, (m.TensorStorageMetadata, m.BytesStorageMetadata)),
                    f"state_dict_metadata[{k[:100]!r}]",
                )
            if obj.storage_data is not None:
                for k, v in obj.storage_data.items():
                    check(
                        type(k) is m.MetadataIndex and type(v) is self.fs._StorageInfo,
                        "storage_data maps MetadataIndex to _StorageInfo",
                    )
            _planner_data(obj.planner_data, len(obj.state_dict_metadata))
        elif short == "TensorStorageMetadata":
            rank = len(obj.size)
            for chunk in obj.chunks:
                check(type(chunk) is m.ChunkStorageMetadata, "chunks")
                check(len(chunk.offsets) == rank, "chunk rank")
                spans = zip(chunk.offsets, chunk.sizes, obj.size, strict=True)
                check(all(o + n <= d for o, n, d in spans), "a chunk outside its tensor")
            self._tiled(obj)
        elif short == "StorageMeta":
            check(all(type(x) is str for x in obj.modules), "StorageMeta.modules")
        elif short == "_StorageInfo" and obj.transform_descriptors:
            # dcp runs the named transforms (zstd...) on the record in this process, before
            # torch.load sees it, with no bound on what comes out: never here.
            raise Invalid(
                f"a record stored through the transform extensions "
                f"{[str(x)[:40] for x in obj.transform_descriptors][:4]} (compression), "
                "which sandboxload does not read: they would expand in this process without "
                "a bound; save the checkpoint without _extensions"
            )

    def _tiled(self, tsm: Any) -> None:
        """The chunks cover the tensor exactly once: their volumes add up to its own and no
        two overlap. dcp allocates the whole tensor and reads each chunk into it, so a gap
        would hand out uninitialised memory, and a chunk named twice is read twice."""
        volume = math.prod(tsm.size)
        check(sum(math.prod(c.sizes) for c in tsm.chunks) == volume, "chunks do not tile")
        chunks = [c for c in tsm.chunks if math.prod(c.sizes)]
        if len(chunks) < 2:
            return
        # A sweep along the dimension that tells the chunks apart best (one comparison per
        # neighbour for the usual slabs): two boxes overlap if they overlap in every dim.
        dim = max(range(len(tsm.size)), key=lambda d: len({c.offsets[d] for c in chunks}))
        chunks.sort(key=lambda c: c.offsets[dim])
        for i, a in enumerate(chunks):
            end = a.offsets[dim] + a.sizes[dim]
            for b in chunks[i + 1 :]:
                if b.offsets[dim] >= end:
                    break
                self.comparisons += 1
                check(self.comparisons <= MAX_CHUNK_COMPARISONS, "too many chunks to check")
                check(not _overlap(a, b), "two chunks of one tensor overlap")

    def enum(self, qualname: Any, value: Any) -> Any:
        if qualname == _MEM_FORMAT_ENCODING:
            check(value in _ENCODED_FORMATS and type(value) is int, "memory format encoding")
            return _ENCODED_FORMATS[value]
        check(qualname == "torch.memory_format" and value in _MEMORY_FORMATS, "memory format")
        return _MEMORY_FORMATS[value]

    @staticmethod
    def path(parts: Any) -> pathlib.PurePosixPath:
        check(isinstance(parts, list) and len(parts) <= 4096, "path")
        for p in parts:
            _name(p, "path part")
        # As pickle would: PosixPath(*parts), which is pure (no filesystem access).
        return pathlib.PosixPath(*parts) if parts else pathlib.PosixPath()

    def finish(self) -> None:
        for run in self.deferred:
            run()
