"""Checkpoint formats, read in the child: torch zip, legacy stacked pickles, legacy tar.

Each reader unpickles with :class:`unpickler.RestrictedUnpickler` and registers storages as
byte ranges: of the checkpoint itself where torch stored them aligned and uncompressed (zip),
or of the memfd, filled here, where the bytes need moving (legacy formats, big-endian data).
"""

import array
import io
import os
import struct
import sys

from ..protocol import ALIGN, DTYPE_SIZES
from . import dcp_standins
from .errors import Malformed, Unsupported
from .torch_standins import StorageRef, StorageType, rebuild_tensor
from .unpickler import RestrictedUnpickler
from .ziparchive import STORED, ZipArchive

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
CHUNK = 8 << 20


class Output:
    """The memfd and the storage table, both bounded by what the parent allowed."""

    def __init__(self, memfd: int, capacity: int) -> None:
        self.memfd = memfd
        self.capacity = capacity
        self.pos = 0
        self.storages: list = []

    def _reserve(self, nbytes: int) -> int:
        start = -(-self.pos // ALIGN) * ALIGN
        if start + nbytes > self.capacity:
            raise Malformed("the checkpoint expands to more data than its own size allows")
        self.pos = start + nbytes
        return start

    def write_bytes(self, data: bytes) -> tuple:
        start = self._reserve(len(data))
        _pwrite_all(self.memfd, memoryview(data), start)
        return start, len(data)

    def copy_range(self, fd: int, offset: int, nbytes: int, swap: int = 0) -> int:
        """Copy ``nbytes`` of ``fd`` at ``offset`` into the memfd (byte-swapping ``swap``-byte
        words when asked); returns where they landed."""
        start = self._reserve(nbytes)
        done = 0
        while done < nbytes:
            n = min(CHUNK, nbytes - done)
            chunk = os.pread(fd, n, offset + done)
            if len(chunk) != n:
                raise Malformed("storage data runs past the end of the file")
            if swap > 1:
                words = array.array({2: "H", 4: "I", 8: "Q"}[swap], chunk)
                words.byteswap()
                chunk = words.tobytes()
            _pwrite_all(self.memfd, memoryview(chunk), start + done)
            done += n
        return start

    def add_storage(
        self, dtype: str, nbytes: int, source: str, offset: int, location: str, base: object = None
    ) -> StorageRef:
        self.storages.append([dtype, nbytes, source, offset, location, base])
        return StorageRef(len(self.storages) - 1, dtype, nbytes)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _location(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or len(value) > 64:
        raise Malformed("storage location must be a short string")
    return value


def _storage_dtype(storage_type: object) -> str:
    if not isinstance(storage_type, StorageType):
        raise Malformed("persistent id names something that is not a storage type")
    return storage_type.dtype


def _swap_width(dtype: str) -> int:
    size = DTYPE_SIZES[dtype]
    return size // 2 if dtype.startswith("complex") else size


# --- torch zip -----------------------------------------------------------------------------


def read_zip(fd: int, size: int, out: Output, pickle_cap: int) -> object:
    zf = ZipArchive(lambda n, off: os.pread(fd, n, off), size)
    names = zf.names()
    if not names:
        raise Malformed("empty zip archive")
    # torch's reader takes the archive name from the first record, then reads only below it.
    prefix = names[0].split("/", 1)[0]
    if any(not n.startswith(prefix + "/") for n in names):
        raise Malformed(f"a record lies outside the archive folder {prefix}/")
    if f"{prefix}/constants.pkl" in zf.by_name:
        raise Unsupported("TorchScript archives (they carry code)")
    byteorder = "little"
    if f"{prefix}/byteorder" in zf.by_name:
        byteorder = zf.read(f"{prefix}/byteorder", 16).decode("ascii", "replace")
        if byteorder not in ("little", "big"):
            raise Malformed(f"unknown byteorder record {byteorder!r}")
    swap = byteorder != sys.byteorder
    loaded: dict = {}

    def persistent_load(pid: object) -> object:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise Malformed("unexpected persistent id in data.pkl")
        _, storage_type, key, location, numel = pid
        dtype = _storage_dtype(storage_type)
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if not isinstance(key, str) or not key or "/" in key or ".." in key:
            raise Malformed("bad storage key")
        if type(numel) is not int or numel < 0:
            raise Malformed("storage size must be a non-negative int")
        if key in loaded:
            return loaded[key]
        nbytes = numel * DTYPE_SIZES[dtype]
        entry = zf.entry(f"{prefix}/data/{key}")
        if entry.method != STORED:
            raise Malformed(
                f"storage record data/{key} is compressed; torch never writes compressed storages"
            )
        if entry.size != nbytes or entry.csize != nbytes:
            raise Malformed(
                f"storage record data/{key} holds {entry.size} bytes, the pickle says {nbytes}"
            )
        start = zf.data_offset(entry)
        location = _location(location)
        if (swap and _swap_width(dtype) > 1) or start % ALIGN:
            # Byte-swapped, or not where torch would have put it: copied to an aligned range.
            moved = out.copy_range(fd, start, nbytes, _swap_width(dtype) if swap else 0)
            ref = out.add_storage(dtype, nbytes, "memfd", moved, location)
        else:
            ref = out.add_storage(dtype, nbytes, "file", start, location)
        loaded[key] = ref
        return ref

    data = zf.read(f"{prefix}/data.pkl", pickle_cap)
    return RestrictedUnpickler(io.BytesIO(data), persistent_load).load()


# --- torch.distributed.checkpoint metadata -----------------------------------------------


def read_dcp_metadata(f: io.BufferedReader) -> object:
    """``.metadata``: one bare pickle of a ``Metadata`` record, as ``pickle.load`` reads it
    (no persistent ids: it holds no storages)."""
    root = RestrictedUnpickler(f, None, dcp_standins.ALLOWED).load()
    dcp_standins.check_root(root)
    return root


# --- legacy stacked pickles ----------------------------------------------------------------


def read_legacy(f: io.BufferedReader, fd: int, out: Output) -> object:
    magic = RestrictedUnpickler(f).load()
    if magic != LEGACY_MAGIC:
        raise Malformed("invalid magic number: not a torch checkpoint")
    if RestrictedUnpickler(f).load() != LEGACY_PROTOCOL:
        raise Malformed("unsupported legacy protocol version")
    RestrictedUnpickler(f).load()  # sys_info: plain data, unused
    typed: dict = {}  # root key -> (dtype, numel, location)
    refs: dict = {}  # key -> StorageRef (roots and views)
    views: list = []  # (view key, root key, element offset, numel)

    def persistent_load(pid: object) -> object:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise Malformed("unexpected persistent id")
        _, storage_type, root_key, location, numel, view = pid
        dtype = _storage_dtype(storage_type)
        if not isinstance(root_key, str) or type(numel) is not int or numel < 0:
            raise Malformed("bad storage reference")
        if root_key not in refs:
            typed[root_key] = (dtype, numel, _location(location))
            refs[root_key] = StorageRef(-1, dtype, numel * DTYPE_SIZES[dtype])
        if view is None:
            return refs[root_key]
        if not (isinstance(view, tuple) and len(view) == 3):
            raise Malformed("bad storage view")
        view_key, offset, view_numel = view
        if view_key not in refs:
            refs[view_key] = StorageRef(-1, dtype, 0)
            # torch measures a legacy view in elements of the view's own storage type.
            views.append((view_key, root_key, offset, view_numel, dtype))
        return refs[view_key]

    result = RestrictedUnpickler(f, persistent_load).load()
    keys = RestrictedUnpickler(f).load()
    if not isinstance(keys, list) or set(keys) != set(typed) or len(keys) != len(typed):
        raise Malformed("the storage key list does not match the storages the pickle uses")
    offset = f.tell()
    for key in keys:
        dtype, numel, location = typed[key]
        head = os.pread(fd, 8, offset)
        if len(head) != 8 or struct.unpack("<q", head)[0] != numel:
            raise Malformed(f"storage {key}: size on disk does not match the pickle")
        nbytes = numel * DTYPE_SIZES[dtype]
        # Legacy data is little-endian on disk, whatever the host.
        swap = _swap_width(dtype) if sys.byteorder != "little" else 0
        start = out.copy_range(fd, offset + 8, nbytes, swap)
        _bind(refs[key], out.add_storage(dtype, nbytes, "memfd", start, location))
        offset += 8 + nbytes
    _bind_views(views, refs, out)
    return result


def _bind(target: StorageRef, source: StorageRef) -> None:
    target.index, target.dtype, target.nbytes = source.index, source.dtype, source.nbytes


def _bind_views(views: list, refs: dict, out: Output) -> None:
    """Each view becomes a "view" storage: a range of its root's storage, shared with it."""
    for view_key, root_key, offset, numel, view_dtype in views:
        root = refs[root_key]
        if type(offset) is not int or type(numel) is not int or offset < 0 or numel < 0:
            raise Malformed("bad storage view")
        dtype = view_dtype or root.dtype
        item = DTYPE_SIZES[dtype]
        if (offset + numel) * item > root.nbytes:
            raise Malformed("storage view runs past its storage")
        entry = out.storages[root.index]
        # A view of a view is a range of the same base: views always point at a base storage.
        base, start = (entry[5], entry[3]) if entry[2] == "view" else (root.index, 0)
        view = out.add_storage(dtype, numel * item, "view", start + offset * item, entry[4], base)
        _bind(refs[view_key], view)


# --- legacy tar ----------------------------------------------------------------------------


def read_tar(f: io.BufferedReader, fd: int, out: Output) -> object:
    import tarfile  # imported by the worker before the filter, only for this format

    with tarfile.open(fileobj=f, mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
    for name in ("storages", "tensors", "pickle"):
        if name not in members or not members[name].isfile():
            raise Malformed(f"legacy tar checkpoint without a '{name}' member")
    objects: dict = {}
    _tar_storages(_Window(f, members["storages"]), fd, out, objects)
    _tar_tensors(_Window(f, members["tensors"]), objects)

    def persistent_load(pid: object) -> object:
        if isinstance(pid, tuple):
            # ('module', cls, source file, source): a class object, which is never data.
            raise Malformed("legacy module-source records are not data")
        try:
            return objects[int(pid)]
        except (KeyError, ValueError, TypeError):
            raise Malformed("unknown tensor key") from None

    return RestrictedUnpickler(_Window(f, members["pickle"]), persistent_load).load()


def _count(w: "_Window", what: str) -> int:
    count = RestrictedUnpickler(w).load()
    if type(count) is not int or count < 0:
        raise Malformed(f"bad {what} count")
    return count


def _tar_storages(sf: "_Window", fd: int, out: Output, objects: dict) -> None:
    for _ in range(_count(sf, "storage")):
        args = RestrictedUnpickler(sf).load()
        if not (isinstance(args, tuple) and len(args) == 3):
            raise Malformed("bad storage header")
        key, location, storage_type = args
        dtype = _storage_dtype(storage_type)
        numel = struct.unpack("<q", sf.read_exact(8))[0]
        nbytes = numel * DTYPE_SIZES[dtype]
        if numel < 0 or nbytes > sf.remaining():
            raise Malformed("storage size runs past its member")
        start = out.copy_range(fd, sf.absolute(), nbytes)
        sf.skip(nbytes)
        objects[key] = out.add_storage(dtype, nbytes, "memfd", start, _location(location))
    for view in RestrictedUnpickler(sf).load():
        if not (isinstance(view, tuple) and len(view) == 4) or view[1] not in objects:
            raise Malformed("bad storage view")
        target, root_key, offset, numel = view
        objects[target] = StorageRef(-1, "uint8", 0)
        # The tar format measures a view in elements of its root's type.
        _bind_views([(target, root_key, offset, numel, None)], objects, out)


def _tar_tensors(tf: "_Window", objects: dict) -> None:
    for _ in range(_count(tf, "tensor")):
        args = RestrictedUnpickler(tf).load()
        if not (isinstance(args, tuple) and len(args) == 3) or args[1] not in objects:
            raise Malformed("bad tensor header")
        key, storage_id, _tensor_type = args
        (ndim,) = struct.unpack("<i", tf.read_exact(4))
        tf.read_exact(4)  # legacy encoding treated ndim as 8 bytes
        if not 0 <= ndim <= 64:
            raise Malformed("bad tensor rank")
        size = struct.unpack(f"<{ndim}q", tf.read_exact(8 * ndim))
        stride = struct.unpack(f"<{ndim}q", tf.read_exact(8 * ndim))
        (offset,) = struct.unpack("<q", tf.read_exact(8))
        objects[key] = rebuild_tensor(objects[storage_id], offset, size, stride)


class _Window(io.RawIOBase):
    """A read-only view of ``size`` bytes of ``f`` starting at ``start`` (a tar member)."""

    def __init__(self, f: io.BufferedReader, member: "tarfile.TarInfo") -> None:  # noqa: F821
        self.f, self.start, self.size, self.pos = f, member.offset_data, member.size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def read_exact(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise Malformed("truncated tar member")
        return data

    def remaining(self) -> int:
        return self.size - self.pos

    def absolute(self) -> int:
        return self.start + self.pos

    def skip(self, n: int) -> None:
        self.pos += n
