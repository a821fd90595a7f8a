"""The parent is a parser of hostile input: descriptions no honest child produces are refused
with CorruptCheckpointError, and crafted checkpoints that exploited the parent's trust load
as torch loads them, or not at all."""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sandboxload.errors import CorruptCheckpointError

from .attacks import G, X, torch_zip
from .helpers import rebuild_over

# Every test here runs with the defaults, activated in this process.
pytestmark = pytest.mark.usefixtures("sandboxed")

FILE = bytes(range(256)) * 2  # a 512-byte "checkpoint" the storages point into


def build(description: dict[str, Any], file: bytes = FILE, memfd: bytes = b"") -> Any:
    return rebuild_over(description, file, memfd, "/m/hostile.pt")


def desc(nodes: list[Any], storages: list[Any] | None = None, root: int | None = None) -> dict:
    return {
        "version": 1,
        "root": len(nodes) - 1 if root is None else root,
        "nodes": nodes,
        "storages": storages or [],
    }


def tensor(sid: int, size: list[int], attrs: dict[str, int] | None = None, dtype: str = "float32"):
    return ["tensor", sid, 0, size, [1] * len(size), False, dtype, {}, attrs or {}]


def pair(*storages: list[Any]) -> dict:
    """Two tensors over the first two storages, in a tuple."""
    return desc([tensor(0, [4]), tensor(1, [4]), ["tuple", [0, 1]]], list(storages))


HOSTILE = {
    "two storages on one range": pair(
        ["float32", 16, "file", 0, "cpu", None], ["float32", 16, "file", 0, "cpu", None]
    ),
    "overlapping ranges": pair(
        ["float32", 128, "file", 0, "cpu", None], ["float32", 128, "file", 64, "cpu", None]
    ),
    "misaligned range": pair(
        ["float32", 16, "file", 4, "cpu", None], ["float32", 16, "file", 128, "cpu", None]
    ),
    "view of a later storage": pair(
        ["float32", 16, "view", 0, "cpu", 1], ["float32", 64, "file", 0, "cpu", None]
    ),
    "view of a view": desc(
        [tensor(2, [4]), tensor(0, [4]), ["tuple", [0, 1]]],
        [
            ["float32", 64, "file", 0, "cpu", None],
            ["float32", 32, "view", 0, "cpu", 0],
            ["float32", 16, "view", 0, "cpu", 1],
        ],
    ),
    "view past its base": pair(
        ["float32", 64, "file", 0, "cpu", None], ["float32", 32, "view", 48, "cpu", 0]
    ),
    "file range with a base": pair(
        ["float32", 16, "file", 0, "cpu", 0], ["float32", 16, "file", 64, "cpu", None]
    ),
    "partial element": pair(
        ["float32", 6, "file", 0, "cpu", None], ["float32", 16, "file", 64, "cpu", None]
    ),
    "layout by attribute name": desc([["layout", "_inductor"]]),
    "layout without torch prefix": desc([["layout", "strided"]]),
    "numpy dtype flags": desc(
        [["npdtype", "<f8", False, True, [3, "<", None, None, None, -1, -1, 63]]]
    ),
    "numpy dtype size": desc(
        [["npdtype", "<f8", False, True, [3, "<", None, None, None, 4, -1, 0]]]
    ),
    "attribute named like a property": desc(
        [tensor(0, [4], {"shape": 0}), ["int", 1]],
        [["float32", 16, "file", 0, "cpu", None]],
        root=0,
    ),
    "unknown node kind": desc([["pointer", 1]]),
    "node with a missing field": desc([["tensor", 0, 0, [4], [1], False, "float32", {}]]),
    "forward reference": desc([["tuple", [1]], ["int", 1]], root=0),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_descriptions_are_refused(case: str) -> None:
    with pytest.raises(CorruptCheckpointError) as info:
        build(HOSTILE[case])
    assert "/m/hostile.pt" in str(info.value)


def test_honest_views_share_their_base() -> None:
    out = build(pair(["float32", 64, "file", 0, "cpu", None], ["float64", 16, "view", 8, "cpu", 0]))
    base, view = out
    assert view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr() + 8
    assert build(desc([["layout", "torch.strided"]])) is torch.strided


# --- crafted checkpoints, end to end -----------------------------------------------------------


def _local(name: str, data: bytes, offset: int) -> bytes:
    """A stored zip local header + data whose data starts on a 64-byte boundary."""
    raw = name.encode()
    pad = (-(offset + 30 + len(raw))) % 64
    return (
        struct.pack(
            "<4s5H3I2H",
            b"PK\x03\x04",
            20,
            0,
            0,
            0,
            0,
            zlib.crc32(data),
            len(data),
            len(data),
            len(raw),
            pad,
        )
        + raw
        + b"\0" * pad
        + data
    )


def _central(name: str, data: bytes, header: int) -> bytes:
    raw = name.encode()
    return (
        struct.pack(
            "<4s6H3I5H2I",
            b"PK\x01\x02",
            20,
            20,
            0,
            0,
            0,
            0,
            zlib.crc32(data),
            len(data),
            len(data),
            len(raw),
            0,
            0,
            0,
            0,
            0,
            header,
        )
        + raw
    )


FOUR = struct.pack("<4f", 1, 2, 3, 4)


def _args(key: str, numel: int) -> bytes:
    """The argument tuple of _rebuild_tensor_v2 for a 4-float tensor over storage ``key``."""
    pid = b"(" + X("storage") + G("torch", "FloatStorage") + X(key) + X("cpu")
    pid += b"K" + bytes([numel]) + b"tQ"
    return b"(" + pid + b"K\x00(K\x04t(K\x01t\x89" + G("collections", "OrderedDict") + b")Rt"


def _tensor_pickle(key: str, numel: int = 4) -> bytes:
    return G("torch._utils", "_rebuild_tensor_v2") + _args(key, numel) + b"R"


def overlapping_records() -> bytes:
    """data/1's header and data lie inside data/0's bytes: two valid, aligned records over
    one region of the file."""
    pkl = b"\x80\x02(" + _tensor_pickle("0", 32) + _tensor_pickle("1") + b"t."
    body = _local("archive/data.pkl", pkl, 0)
    zero_header = len(body)
    zero_data_at = zero_header + 30 + len("archive/data/0")
    zero_data_at += (-zero_data_at) % 64
    one_header = zero_data_at + 4
    one = _local("archive/data/1", FOUR, one_header)
    zero_data = (b"\0" * 4 + one).ljust(128, b"\0")
    assert len(zero_data) == 128
    body += _local("archive/data/0", zero_data, zero_header)
    entries = [
        ("archive/data.pkl", pkl, 0),
        ("archive/data/0", zero_data, zero_header),
        ("archive/data/1", FOUR, one_header),
    ]
    central = b"".join(_central(n, d, h) for n, d, h in entries)
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 3, 3, len(central), len(body), 0)
    return body + central + end


def test_overlapping_zip_records_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "overlap.pt"
    path.write_bytes(overlapping_records())
    with pytest.raises(CorruptCheckpointError, match="overlap"):
        torch.load(path)


def test_unaligned_zip_records_load_aligned(tmp_path: Path) -> None:
    """A torch checkpoint re-zipped by zipfile (records wherever they fall) loads like torch
    loads it, each tensor on an aligned address."""
    src = tmp_path / "src.pt"
    sd = {"a": torch.arange(5, dtype=torch.float64), "b": torch.arange(3, dtype=torch.int16)}
    torch.save(sd, src)
    path = tmp_path / "rezipped.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    out = torch.load(path)
    for key, t in sd.items():
        assert torch.equal(out[key], t)
        assert out[key].data_ptr() % 64 == 0


def _multiarray() -> Any:
    import importlib

    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1.x
        return importlib.import_module("numpy.core.multiarray")


def test_numpy_dtype_flags_from_the_file_are_refused(tmp_path: Path) -> None:
    class Dtype:
        def __reduce__(self) -> Any:
            # NPY_ITEM_IS_POINTER: numpy would read the scalar through a pointer (heap memory)
            return (np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 4))

    class Scalar:
        def __reduce__(self) -> Any:
            return (_multiarray().scalar, (Dtype(), b"\0" * 8))

    path = tmp_path / "flags.pt"
    path.write_bytes(torch_zip(pickle.dumps({"x": Scalar()}, protocol=2)))
    with pytest.raises(CorruptCheckpointError, match="numpy dtype"):
        torch.load(path)


def test_layouts_saved_by_torch_load(tmp_path: Path) -> None:
    path = tmp_path / "layouts.pt"
    torch.save({"s": torch.strided, "c": torch.sparse_coo}, path)
    assert torch.load(path) == {"s": torch.strided, "c": torch.sparse_coo}


def test_numpy_in_a_zip_loads_twice(tmp_path: Path) -> None:
    """transformers loads each file twice; NumPy arrays live in the memfd, so this
    description may not be reused without it."""
    path = tmp_path / "np.pt"
    torch.save({"a": np.arange(3), "t": torch.ones(2)}, path)
    for _ in range(2):
        out = torch.load(path, weights_only=False)
        assert out["a"].tolist() == [0, 1, 2] and torch.equal(out["t"], torch.ones(2))


def test_attribute_named_like_a_property_is_a_clean_error(tmp_path: Path) -> None:
    state = b"}" + X("shape") + b"K\x01s"
    pkl = (
        b"\x80\x02"
        + G("torch._tensor", "_rebuild_from_type_v2")
        + b"("
        + G("torch._utils", "_rebuild_tensor_v2")
        + G("torch", "Tensor")
        + _args("0", 4)
        + state
        + b"tR."
    )
    path = tmp_path / "attr.pt"
    path.write_bytes(torch_zip(pkl, extra={"archive/data/0": b"\0" * 16}))
    with pytest.raises(CorruptCheckpointError):
        torch.load(path)


def test_legacy_view_of_another_type_is_measured_in_its_own(tmp_path: Path) -> None:
    """A legacy view declared as DoubleStorage over a FloatStorage root: torch measures the
    view's offset in doubles."""
    path = tmp_path / "views.pt"
    root = torch.arange(8, dtype=torch.float32)

    class Stor:
        def __init__(self, pid: tuple[Any, ...]) -> None:
            self.pid = pid

    class T:
        def __init__(self, storage: Stor, size: int) -> None:
            self.storage, self.size = storage, size

        def __reduce__(self) -> Any:
            args = (self.storage, 0, (self.size,), (1,), False, collections.OrderedDict())
            return (torch._utils._rebuild_tensor_v2, args)

    class P(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return obj.pid if isinstance(obj, Stor) else None

    whole = Stor(("storage", torch.FloatStorage, "0", "cpu", 8, None))
    view = Stor(("storage", torch.DoubleStorage, "0", "cpu", 4, ("v", 1, 2)))
    f = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(head, f, protocol=2)
    P(f, protocol=2).dump([T(whole, 8), T(view, 2)])
    pickle.dump(["0"], f, protocol=2)
    f.write(struct.pack("<q", 8) + root.numpy().tobytes())
    path.write_bytes(f.getvalue())
    got = torch.load(path, weights_only=False)
    want = torch.frombuffer(bytearray(root.numpy().tobytes()[8:24]), dtype=torch.float64)
    assert torch.equal(got[0], root) and torch.equal(got[1], want)
    assert got[1].untyped_storage().data_ptr() == got[0].untyped_storage().data_ptr() + 8
