"""Parity with torch's own allowlist, walked from torch itself (issue 11).

Every global ``torch.load(weights_only=True)`` admits by default
(``torch._weights_only_unpickler._get_allowed_globals()``) is exercised by a checkpoint here in
the role a file gives it: storage classes in persistent ids, rebuild functions called, classes
constructed. Each checkpoint loads through sandboxload to what torch returns in a process
without sandboxload (values, dtypes, layouts, strides, offsets, sharing, quantizers,
attributes), or, where torch fails too, to a typed error. A torch that admits a new global
fails :func:`test_every_allowed_global_is_exercised` until a checkpoint here covers it.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import pickletools
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch._weights_only_unpickler import _get_allowed_globals

import sandboxload
from sandboxload.errors import SandboxLoadError
from sandboxload.patches import registry

from . import corpus
from .fingerprint import fingerprint
from .helpers import json_without_sandboxload

pytestmark = pytest.mark.usefixtures("sandboxed")
TESTS = Path(__file__).parent

# Globals whose only role in a file is to be a value (so the "values" checkpoint covers them).
VALUE_ONLY = {
    # torch takes it as a storage class, then fails on it (its dtype is a property)
    "torch.storage.TypedStorage": "no file can use it as a storage type",
}


QUANTIZED = (torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4)


# torch's legacy (pre-zip) loader runs these rebuilds before it has read any storage bytes,
# so torch itself returns garbage (or fails) for them; sandboxload has the bytes and returns
# what the same checkpoint in the zip format gives.
READS_DATA_WHILE_UNPICKLING = ("nested", "calls", "calls.device_from_cpu")


def _is_tensor_type_tag(name: str) -> bool:
    """torch.FloatTensor, torch.cuda.sparse.LongTensor, ...: legacy labels, values only."""
    return name.endswith("Tensor") and name != "torch.Tensor"


class Call:
    """Pickles as ``fn(*args)``: a rebuild call torch.save itself would not write."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


class Stored:
    """A storage record with the class and location an older torch (or a GPU) wrote."""

    def __init__(self, cls: Any, key: str, location: str, data: bytes, numel: int) -> None:
        self.cls, self.key, self.location, self.data, self.numel = cls, key, location, data, numel


def hand_zip(root: Any, stored: list[Stored], path: Path) -> Path:
    """A torch zip whose persistent ids name ``Stored`` classes and locations verbatim."""

    class Writer(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, Stored):
                return ("storage", obj.cls, obj.key, obj.location, obj.numel)
            return None

    buf = io.BytesIO()
    Writer(buf, protocol=2).dump(root)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", b"little")
        for s in stored:
            zf.writestr(f"archive/data/{s.key}", s.data)
        zf.writestr("archive/version", b"3\n")
    return path


def _allowed() -> dict[str, Any]:
    return _get_allowed_globals()


def _dtype_tensors() -> dict[str, torch.Tensor]:
    """A tensor of every dtype torch admits and can make, with distinct bytes."""
    out = {}
    raw = torch.arange(64, dtype=torch.uint8) * 7 % 251
    for name, value in _allowed().items():
        if not isinstance(value, torch.dtype) or value in QUANTIZED:
            continue
        try:
            t = raw.clone().view(value)
            torch.save(t, io.BytesIO())
        except (RuntimeError, KeyError):
            continue  # sub-byte integers: torch names them, but cannot save their tensors
        out[name] = t
    return out


def _quantized() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g)
    out: dict[str, torch.Tensor] = {}
    for dtype in (torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4):
        out[f"tensor.{dtype}"] = torch.quantize_per_tensor(x, 0.05, 2, dtype)
    for dtype in (torch.qint8, torch.quint8, torch.qint32):
        for axis in (0, 1):
            n = x.shape[axis]
            scales = torch.rand(n, generator=g, dtype=torch.float64) + 0.01
            zps = torch.randint(0, 5, (n,), generator=g)
            out[f"channel.{dtype}.{axis}"] = torch.quantize_per_channel(x, scales, zps, axis, dtype)
    for dtype in (torch.quint8, torch.quint4x2):
        scales = torch.rand(4, generator=g) + 0.01
        out[f"float_qparams.{dtype}"] = torch.quantize_per_channel(
            x, scales, torch.rand(4, generator=g), 0, dtype
        )
    q = out["tensor.torch.qint8"]
    out["view.slice"], out["view.t"], out["view.same"] = q[1:], q.t(), q
    return out


def _sparse() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    dense = torch.randn(4, 6, generator=g) * (torch.rand(4, 6, generator=g) > 0.5)
    dup = torch.sparse_coo_tensor(torch.tensor([[0, 0, 2], [1, 1, 3]]), torch.ones(3), (4, 6))
    return {
        "coo": dup,
        "coo.coalesced": dense.to_sparse(),
        "coo.hybrid": torch.randn(4, 6, 2, generator=g).to_sparse(1),
        "coo.int": dense.to(torch.int32).to_sparse(),
        "csr": dense.to_sparse_csr(),
        "csr.batched": torch.stack([dense, dense * 2]).to_sparse_csr(),
        "csc": dense.to_sparse_csc(),
        "bsr": dense.to_sparse_bsr((2, 3)),
        "bsc": dense.to_sparse_bsc((2, 3)),
    }


def _nested() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "2d": torch.nested.nested_tensor([torch.randn(2, 3, generator=g), torch.randn(4, 3)]),
        "1d": torch.nested.nested_tensor([torch.arange(3), torch.arange(5), torch.arange(0)]),
    }


def _storages() -> dict[str, Any]:
    """Storages as values: one of every storage class torch admits, and one shared with a
    tensor (sharing must survive)."""
    out: dict[str, Any] = {}
    for name, value in _allowed().items():
        dtype = getattr(value, "dtype", None)
        if name.startswith("torch.") and name.endswith("Storage") and ".cuda." not in name:
            if dtype in QUANTIZED:
                q = torch.quantize_per_tensor(torch.arange(8.0), 0.5, 1, dtype)
                out[name] = q.storage()
            elif isinstance(dtype, torch.dtype):
                out[name] = (torch.arange(8) % 2).to(dtype).storage()
    t = torch.arange(6.0)
    out["shared"], out["tensor"] = t.storage(), t
    out["untyped"] = torch.arange(8, dtype=torch.uint8).untyped_storage()
    return out


def _values() -> dict[str, Any]:
    """Every global as a value, pickled by reference (a class, a function, a label)."""
    import importlib

    out = {}
    for name, value in _allowed().items():
        module, _, attr = name.rpartition(".")
        if isinstance(value, (torch.dtype, torch.qscheme)):
            out[name] = value
            continue
        out[name] = getattr(importlib.import_module(module), attr)
    return out


def _objects() -> dict[str, Any]:
    t = torch.arange(6.0).reshape(2, 3)
    p = torch.nn.Parameter(torch.randn(2))
    p.note = "a parameter with state"
    attr = torch.randn(2)
    attr.note = "a tensor with state"
    return {
        "formats": {
            "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
            "channels_last_3d": torch.randn(2, 3, 2, 4, 5).to(memory_format=torch.channels_last_3d),
            "transposed": t.t(),
        },
        "plain": {
            "size": torch.Size([2, 3]),
            "device": torch.device("cpu"),
            "device_index": torch.device("cuda", 1),
            "counter": collections.Counter("abracadabra"),
            "odict": collections.OrderedDict(a=1),
            "set": {1, 2},
            "complex": 1 - 2j,
            "bytearray": bytearray(b"\x00\x01"),
            "bytes": b"\xff\x00",  # protocol 2 writes bytes as _codecs.encode
            "param": p,
            "param_plain": torch.nn.Parameter(torch.randn(2)),
            "param_frozen": torch.nn.Parameter(torch.randn(2), requires_grad=False),
            "attr": attr,
            "meta": torch.empty(2, 3, device="meta"),
        },
        "calls": {
            "v1": Call(torch._utils._rebuild_tensor, t.storage(), 1, (2,), (2,)),
            "device_from_cpu": Call(
                torch._utils._rebuild_device_tensor_from_cpu_tensor, t, torch.float64, "cpu", True
            ),
            "v3": torch.arange(4, dtype=torch.int32).to(torch.uint16),
            "as_parameter": Call(
                torch._tensor._rebuild_from_type_v2,
                torch._utils._rebuild_tensor_v2,
                torch.nn.Parameter,
                (t.storage(), 0, (6,), (1,), False, collections.OrderedDict()),
                {},
            ),
        },
    }


# Checkpoints torch fails on too (sandboxload must fail typed), and those torch loads only
# with numpy's globals admitted (weights_only=False on the trusted side).
CALL_FAILS = {
    "wrapper_subclass": Call(
        torch._utils._rebuild_wrapper_subclass,
        torch.Tensor,
        torch.float32,
        torch.Size([2]),
        (1,),
        0,
        torch.strided,
        "cpu",
        False,
    ),
}
NUMPY = {
    "device_from_numpy": Call(
        torch._utils._rebuild_device_tensor_from_numpy,
        np.arange(3.0),
        torch.float32,
        "cpu",
        False,
    )
}


def _cuda_storages(path: Path) -> Path:
    """A tensor on each torch.cuda.<X>Storage, as a GPU (or an older torch) wrote it."""
    root, stored = {}, []
    for i, (name, value) in enumerate(_allowed().items()):
        if not name.startswith("torch.cuda.") or not name.endswith("Storage"):
            continue
        cls = getattr(torch.cuda, name.rpartition(".")[2])
        dtype = value.dtype
        data = (torch.arange(4) % 2).to(dtype)
        s = Stored(cls, str(i), "cuda:0", data.view(torch.uint8).numpy().tobytes(), 4)
        stored.append(s)
        root[name] = Call(
            torch._utils._rebuild_tensor_v2, s, 0, (4,), (1,), False, collections.OrderedDict()
        )
    return hand_zip(root, stored, path)


# --- the checkpoints, and torch's answers in a clean process -------------------------------

TRUSTED = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from fingerprint import fingerprint
out = {{}}
for path, full in json.loads(sys.argv[1]):
    try:
        obj = torch.load(path, weights_only=not full, map_location="cpu")
        out[path] = fingerprint(obj)
    except Exception as exc:
        out[path] = ["error", type(exc).__name__, str(exc)[:300]]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bool]]:
    """name -> (path, loads only with numpy admitted)."""
    d = tmp_path_factory.mktemp("allowlist")
    out: dict[str, tuple[Path, bool]] = {}
    groups = {
        "dtypes": _dtype_tensors(),
        "quantized": _quantized(),
        "sparse": _sparse(),
        "nested": _nested(),
        "storages": _storages(),
        **_objects(),
        "call_fails": CALL_FAILS,
    }
    for name, obj in groups.items():
        for path in corpus.save_forms(obj, d, name):
            out[path.name] = (path, False)
        for key, value in obj.items():  # each also alone, so one failure names its case
            for path in corpus.save_forms(value, d, f"{name}.{key}"):
                out[path.name] = (path, False)
    for path in corpus.save_forms(NUMPY, d, "numpy"):
        out[path.name] = (path, True)
    out["cuda_storages"] = (_cuda_storages(d / "cuda.pt"), False)
    return out


@pytest.fixture(scope="module")
def expected(checkpoints: dict[str, tuple[Path, bool]]) -> dict[str, Any]:
    jobs = [(str(p), full) for p, full in checkpoints.values()]
    return json_without_sandboxload(TRUSTED.format(tests=str(TESTS)), jobs)


def _globals_named(stream: io.BytesIO) -> set[str]:
    """The globals the pickles at the head of ``stream`` name (a legacy file stacks several,
    then raw storage bytes, where reading stops)."""
    names: set[str] = set()
    while True:
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    names.add(".".join(_python3_name(*arg.split(" "))))
                elif op.name == "STACK_GLOBAL":
                    names.add(".".join(strings[-2:]))
                if isinstance(arg, str):
                    strings.append(arg)
        except ValueError:
            return names


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Protocol 2 spells some globals as Python 2 did; pickle maps them back on load."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _named_in(path: Path) -> set[str]:
    if not zipfile.is_zipfile(path):
        return _globals_named(io.BytesIO(path.read_bytes()))
    with zipfile.ZipFile(path) as zf:
        pickles = [zf.read(n) for n in zf.namelist() if n.endswith("data.pkl")]
    return set().union(*(_globals_named(io.BytesIO(data)) for data in pickles))


def test_every_allowed_global_is_exercised(checkpoints: dict[str, tuple[Path, bool]]) -> None:
    named = set().union(*(_named_in(path) for path, _ in checkpoints.values()))
    missing = [
        name
        for name, value in _allowed().items()
        if name not in named
        and name not in VALUE_ONLY
        and not _is_tensor_type_tag(name)
        and not isinstance(value, (torch.dtype, torch.qscheme))  # test_sandbox_parity
    ]
    assert not missing, f"globals torch admits that no checkpoint here exercises: {missing}"


def test_every_checkpoint_loads_as_torch_loads_it(
    checkpoints: dict[str, tuple[Path, bool]], expected: dict[str, Any]
) -> None:
    differences = []
    for name, (path, _) in sorted(checkpoints.items()):
        want = expected[str(path)]
        group = name.removesuffix(".legacy.pt")
        if group != name and group.rpartition(".")[0] in READS_DATA_WHILE_UNPICKLING:
            want = expected[str(path.with_name(f"{group}.zip.pt"))]
        try:
            got = fingerprint(torch.load(path, map_location="cpu"))
        except SandboxLoadError as exc:
            if want[0] != "error":
                differences.append(f"{name}: refused ({exc}), torch loads it")
            continue
        if want[0] == "error":
            differences.append(f"{name}: loaded, torch fails with {want[1:]}")
        elif got != want:
            differences.append(f"{name}: differs from torch's\n  {got}\n  {want}")
    assert not differences, "\n".join(differences)


def test_every_global_as_a_value_is_torchs_own(tmp_path: Path) -> None:
    path = tmp_path / "values.pt"
    torch.save(_values(), path)
    want = registry.original(registry.TORCH_LOAD)(path, weights_only=True)
    got = torch.load(path)
    assert list(got) == list(want) == list(_allowed())
    for name, value in want.items():
        if isinstance(value, torch.serialization.StorageType):
            assert type(got[name]) is torch.serialization.StorageType
            assert got[name].dtype == value.dtype, name
        else:
            assert got[name] is value, name  # the very object: from torch's fixed table


def test_parity_holds_with_sandboxload_load(checkpoints: dict[str, tuple[Path, bool]]) -> None:
    """The public API takes the same route as torch.load."""
    path = checkpoints["quantized.zip.pt"][0]
    want = fingerprint(torch.load(path))
    assert fingerprint(sandboxload.load(str(path))) == want
