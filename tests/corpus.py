"""Real checkpoints for parity tests: torch.save outputs in zip and legacy form, plus the two
forms torch no longer writes but still reads (big-endian zip, legacy tar), built by hand
exactly as torch's reader expects them. Trusted code: it runs pickle on files it wrote."""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import struct
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sandboxload.patches.registry import TORCH_LOAD, original

DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex32,
    torch.complex64, torch.complex128, torch.uint16, torch.uint32, torch.uint64,
    torch.float8_e5m2, torch.float8_e4m3fn, torch.float8_e5m2fnuz, torch.float8_e4m3fnuz,
    torch.float8_e8m0fnu, torch.float4_e2m1fn_x2,
]  # fmt: skip


def random_tensor(dtype: torch.dtype, n: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n * 16,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        return raw[:n] > 127
    return raw.view(dtype)[:n].clone()


def cases() -> dict[str, Any]:
    torch.manual_seed(0)
    base = torch.arange(100, dtype=torch.float32)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    state = module.state_dict()
    state["tied"] = state["0.weight"]
    attr = torch.randn(3)
    attr.note = "has a python attribute"
    nested: Any = []
    for _ in range(30):
        nested = [nested, nested]
    return {
        "dtypes": {str(d): random_tensor(d, seed=i) for i, d in enumerate(DTYPES)},
        "views": {
            "base": base,
            "slice": base[10:20],
            "t": base.view(10, 10).t(),
            "step": base[::3],
            "expand": base[:1].expand(5),
            "same": base,
            "narrow": base.view(10, 10)[2:5, 3:7],
        },
        "edge": {
            "empty": torch.zeros(0),
            "empty2d": torch.zeros(3, 0),
            "scalar": torch.tensor(3.5),
            "grad": torch.zeros(2, requires_grad=True),
        },
        "containers": {
            "list": [1, 2.5, "x", None, True],
            "tuple": (1, (2, 3)),
            "set": {1, 2},
            "frozenset": frozenset({"a"}),
            "bytes": b"\x00\xff" * 10,
            "bytearray": bytearray(b"ab"),
            "complex": 1 + 2j,
            "bigint": 2**100,
            "nan": float("nan"),
            "inf": float("-inf"),
            "unicode": "héllo ✓",
            "nested": {"a": [{"b": ({},)}]},
            "counter": collections.Counter("hello"),
            "odict": collections.OrderedDict(a=1, b=[2]),
            "memo_dag": nested,
        },
        "module_state": state,
        "params": {
            "p": torch.nn.Parameter(torch.randn(2, 2)),
            "frozen": torch.nn.Parameter(torch.randn(2), requires_grad=False),
            "in_list": [torch.nn.Parameter(torch.randn(1))],
            "attr": attr,
        },
        "numpy": {
            "a": np.arange(6).reshape(2, 3),
            "f": np.asfortranarray(np.ones((2, 3), dtype=np.float32)),
            "be": np.arange(4, dtype=">i4"),
            "scalar": np.float32(1.5),
            "int_scalar": np.int64(7),
            "dtype": np.dtype("f8"),
            "bool": np.array([True, False]),
            "complex": np.array([1 + 2j]),
            "empty": np.zeros((0, 3)),
        },
        "namespace": {
            "args": argparse.Namespace(lr=0.1, layers=[1, 2], name="x"),
            "size": torch.Size([2, 3]),
            "device": torch.device("cpu"),
            "dtype": torch.float16,
        },
        "meta": {"m": torch.empty(3, 4, device="meta")},
        "conj": {
            "c": torch.randn(3, dtype=torch.complex64).conj(),
            "n": torch.randn(3, dtype=torch.complex64).conj().imag,
        },
        "tensor_root": torch.randn(4, 4)[1:, ::2],
    }


def save_forms(obj: Any, directory: Path, name: str) -> list[Path]:
    """``name.zip.pt`` and, where torch can still write it, ``name.legacy.pt``."""
    out = []
    path = directory / f"{name}.zip.pt"
    torch.save(obj, path)
    out.append(path)
    path = directory / f"{name}.legacy.pt"
    try:
        torch.save(obj, path, _use_new_zipfile_serialization=False)
        # Our own file: check that the real (unpatched) torch.load can read it back.
        original(TORCH_LOAD)(path, weights_only=False)
        out.append(path)
    except Exception:  # newer dtypes save in the legacy format but do not load from it
        path.unlink(missing_ok=True)
    return out


class _Recorder(pickle.Unpickler):
    """Reads data.pkl only to learn each storage key's dtype (trusted, our own file)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.dtypes: dict[str, torch.dtype] = {}

    def persistent_load(self, pid: Any) -> Any:
        _, storage_type, key, _, _ = pid
        if storage_type is not torch.UntypedStorage:
            self.dtypes[key] = storage_type.dtype
        return key

    def find_class(self, module: str, name: str) -> Any:
        if name == "_rebuild_tensor_v3":

            def v3(key: str, *args: Any) -> None:
                self.dtypes[key] = args[5]

            return v3
        if module in ("torch._utils", "torch._tensor"):
            return lambda *a, **k: None
        return super().find_class(module, name)


def big_endian_zip(obj: Any, path: Path) -> Path:
    """A torch zip with ``byteorder`` = big, as a big-endian machine writes it."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    prefix = src.namelist()[0].split("/")[0]
    rec = _Recorder(src.read(f"{prefix}/data.pkl"))
    rec.load()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            rel = info.filename.split("/", 1)[1]
            if rel == "byteorder":
                data = b"big"
            elif rel.startswith("data/") and rel[5:] in rec.dtypes:
                dtype = rec.dtypes[rel[5:]]
                width = dtype.itemsize // 2 if dtype.is_complex else dtype.itemsize
                if width > 1:
                    arr = np.frombuffer(data, dtype=f"<u{width}")
                    data = arr.byteswap().tobytes()
            dst.writestr(info, data)
    return path


def legacy_tar(tensors: dict[int, torch.Tensor], root: Any, path: Path) -> Path:
    """The pre-0.4 tar format (members sys_info, storages, tensors, pickle), by hand."""
    storages: dict[int, torch.Tensor] = {}
    for t in tensors.values():
        storages.setdefault(t.untyped_storage().data_ptr(), t)
    keys = {ptr: 1000 + i for i, ptr in enumerate(storages)}  # one namespace with tensor keys
    sbuf = io.BytesIO()
    pickle.dump(len(storages), sbuf, protocol=2)
    for ptr, t in storages.items():
        stype = {torch.float32: torch.FloatStorage, torch.int64: torch.LongStorage}[t.dtype]
        pickle.dump((keys[ptr], "cpu", stype), sbuf, protocol=2)
        raw = t.untyped_storage()
        numel = raw.nbytes() // t.element_size()
        sbuf.write(struct.pack("<q", numel))
        sbuf.write(bytes(raw))
    pickle.dump([], sbuf, protocol=2)
    tbuf = io.BytesIO()
    pickle.dump(len(tensors), tbuf, protocol=2)
    for key, t in tensors.items():
        ttype = {torch.float32: torch.FloatTensor, torch.int64: torch.LongTensor}[t.dtype]
        pickle.dump((key, keys[t.untyped_storage().data_ptr()], ttype), tbuf, protocol=2)
        tbuf.write(struct.pack("<ii", t.dim(), 0))
        tbuf.write(struct.pack(f"<{t.dim()}q", *t.shape))
        tbuf.write(struct.pack(f"<{t.dim()}q", *t.stride()))
        tbuf.write(struct.pack("<q", t.storage_offset()))
    ids = {id(t): key for key, t in tensors.items()}

    class _P(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return str(ids[id(obj)]) if id(obj) in ids else None

    mbuf = io.BytesIO()
    _P(mbuf, protocol=2).dump(root)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            ("sys_info", pickle.dumps({"little_endian": sys.byteorder == "little"}, protocol=2)),
            ("storages", sbuf.getvalue()),
            ("tensors", tbuf.getvalue()),
            ("pickle", mbuf.getvalue()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
