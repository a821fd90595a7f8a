"""Quantized, sparse and nested tensors from a hostile file: every bound torch takes on trust
is checked before the tensor exists.

torch.load(weights_only=True) loads a sparse tensor with out-of-range indices (it checks
sparse invariants only when the caller enabled them): live below, without sandboxload; it
becomes an out-of-bounds read or write the first time the tensor is used. Through
sandboxload it is a CorruptCheckpointError that names the file, and the parent carries on.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from sandboxload.errors import CorruptCheckpointError
from sandboxload.patches import registry

from .test_allowlist_parity import Call

pytestmark = pytest.mark.usefixtures("sandboxed")


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _torch_load(path: Path) -> object:
    return registry.original(registry.TORCH_LOAD)(path, weights_only=True)


def _bad_coo() -> torch.Tensor:
    return torch.sparse_coo_tensor(
        torch.tensor([[0, 1000], [1, 2]]), torch.ones(2), (4, 6), check_invariants=False
    )


def _bad_csr() -> torch.Tensor:
    return torch.sparse_csr_tensor(
        torch.tensor([0, 1, 2]),
        torch.tensor([0, 999]),
        torch.ones(2),
        (2, 3),
        check_invariants=False,
    )


def _bad_nested() -> Call:
    return Call(
        torch._utils._rebuild_nested_tensor,
        torch.arange(6.0),
        torch.tensor([[2], [4096]]),
        torch.tensor([[1], [1]]),
        torch.tensor([0, 2]),
    )


LIVE = {"coo": _bad_coo, "csr": _bad_csr}


@pytest.mark.parametrize("case", list(LIVE))
def test_out_of_bounds_layouts_load_in_torch_and_are_refused(tmp_path: Path, case: str) -> None:
    path = _save(LIVE[case](), tmp_path / f"{case}.pt")
    loaded = _torch_load(path)  # live: torch hands back a tensor that points outside itself
    assert isinstance(loaded, torch.Tensor)
    if case == "coo":
        assert int(loaded._indices().max()) >= loaded.shape[0]
    else:
        assert int(loaded.col_indices().max()) >= loaded.shape[1]
    with pytest.raises(CorruptCheckpointError) as info:
        torch.load(path)
    assert str(path) in str(info.value)
    assert torch.load(_save({"ok": torch.ones(2).to_sparse()}, tmp_path / "ok.pt"))["ok"].is_sparse


def test_a_nested_component_past_its_buffer_is_refused_before_torch_sees_it(
    tmp_path: Path,
) -> None:
    path = _save(_bad_nested(), tmp_path / "nested.pt")
    with pytest.raises(RuntimeError, match="out of bounds"):
        _torch_load(path)  # torch bounds these itself
    with pytest.raises(CorruptCheckpointError, match="runs past its buffer"):
        torch.load(path)


def _qstorage(dtype: torch.dtype = torch.qint8, n: int = 8) -> object:
    return torch.quantize_per_tensor(torch.arange(float(n)), 0.5, 1, dtype).storage()


def _qcall(storage: object, size: tuple, stride: tuple, qparams: tuple, offset: int = 0) -> Call:
    return Call(
        torch._utils._rebuild_qtensor,
        storage,
        offset,
        size,
        stride,
        qparams,
        False,
        collections.OrderedDict(),
    )


HOSTILE_Q = {
    "past_storage": lambda: _qcall(_qstorage(), (100,), (1,), (torch.per_tensor_affine, 0.1, 0)),
    "offset_past": lambda: _qcall(
        _qstorage(), (4,), (1,), (torch.per_tensor_affine, 0.1, 0), offset=6
    ),
    "packed_strided": lambda: _qcall(
        _qstorage(torch.quint4x2), (2, 4), (1, 2), (torch.per_tensor_affine, 0.1, 0)
    ),
    "packed_past": lambda: _qcall(
        _qstorage(torch.quint4x2), (40,), (1,), (torch.per_tensor_affine, 0.1, 0)
    ),
    "axis": lambda: _qcall(
        _qstorage(),
        (2, 4),
        (4, 1),
        (torch.per_channel_affine, torch.ones(2, dtype=torch.double), torch.zeros(2), 5),
    ),
    "channels": lambda: _qcall(
        _qstorage(),
        (2, 4),
        (4, 1),
        (torch.per_channel_affine, torch.ones(3, dtype=torch.double), torch.zeros(3), 0),
    ),
    "scheme": lambda: _qcall(_qstorage(), (8,), (1,), (torch.per_tensor_symmetric, 0.1, 0)),
    "plain_view_of_quantized": lambda: Call(
        torch._utils._rebuild_tensor_v2, _qstorage(), 0, (8,), (1,), False, {}
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_Q))
def test_hostile_quantized_tensors_are_refused(tmp_path: Path, case: str) -> None:
    path = _save(HOSTILE_Q[case](), tmp_path / f"{case}.pt")
    with pytest.raises(CorruptCheckpointError) as info:
        torch.load(path)
    assert str(path) in str(info.value)


def test_a_coalesced_claim_is_checked(tmp_path: Path) -> None:
    dup = torch.sparse_coo_tensor(
        torch.tensor([[1, 1], [2, 2]]), torch.ones(2), (4, 6), is_coalesced=True
    )
    path = _save(dup, tmp_path / "dup.pt")
    with pytest.raises(CorruptCheckpointError):
        torch.load(path)


# --- the parent, given a hostile description directly (a compromised child) ---------------

QSTORE = [["qint8", 64, "file", 0, "cpu", None]]
HOSTILE_NODES = {
    "global outside torch's table": ([["global", "os.system"]], []),
    "global not a string": ([["global", ["torch", "Size"]]], []),
    "storage index": ([["storage", 3]], QSTORE),
    "qparams not a tuple": (
        [
            ["qscheme", "per_tensor_affine"],
            ["list", [0]],
            ["qtensor", 0, 0, [4], [1], False, 1, {}],
        ],
        QSTORE,
    ),
    "qtensor over a float storage": (
        [
            ["qscheme", "per_tensor_affine"],
            ["float", 0.5],
            ["int", 0],
            ["tuple", [0, 1, 2]],
            ["qtensor", 0, 0, [4], [1], False, 3, {}],
        ],
        [["float32", 64, "file", 0, "cpu", None]],
    ),
    "qtensor zero point not an int": (
        [
            ["qscheme", "per_tensor_affine"],
            ["float", 0.5],
            ["float", 0.5],
            ["tuple", [0, 1, 2]],
            ["qtensor", 0, 0, [4], [1], False, 3, {}],
        ],
        QSTORE,
    ),
    "sparse layout": ([["tuple", []], ["sparse", "torch.jagged", 0, {}]], []),
    "sparse data not tensors": (
        [["int", 1], ["size", [2]], ["tuple", [0, 0, 1]], ["sparse", "torch.sparse_coo", 2, {}]],
        [],
    ),
    "nested parts": ([["nested", [0, 0], {}]], []),
}


@pytest.mark.parametrize("case", list(HOSTILE_NODES))
def test_hostile_descriptions_of_special_values_are_refused(case: str) -> None:
    from .helpers import rebuild_over

    nodes, storages = HOSTILE_NODES[case]
    description = {"version": 1, "root": len(nodes) - 1, "nodes": nodes, "storages": storages}
    with pytest.raises(CorruptCheckpointError):
        rebuild_over(description, bytes(range(256)), name="/m/hostile.pt")


# --- a few bytes of file standing for many values (found by an attack review) -------------


def _expanded(n: int, value: int = 0, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return torch.tensor([value], dtype=dtype).expand(n)


AMPLIFIED = {
    # torch reads offsets as contiguous memory: a strided view that reads [0, 0] is [0, 4]
    "nested offsets strided": lambda: Call(
        torch._utils._rebuild_nested_tensor,
        torch.arange(4.0),
        torch.tensor([[4], [4]]),
        torch.tensor([[1], [1]]),
        torch.tensor([0, 4, 0, 0])[::2],
    ),
    "nested rows expanded": lambda: Call(
        torch._utils._rebuild_nested_tensor,
        torch.arange(8.0),
        torch.tensor([[1]]).expand(1 << 20, 1),
        torch.tensor([[1]]).expand(1 << 20, 1),
        _expanded(1 << 20),
    ),
    "sparse indices expanded": lambda: torch.sparse_coo_tensor(
        torch.zeros(2, 1, dtype=torch.int64).expand(2, 1 << 20),
        torch.ones(1).expand(1 << 20),
        (4, 4),
        check_invariants=False,
    ),
    "per-channel scales expanded": lambda: _qcall(
        _qstorage(),
        (1 << 20,),
        (0,),
        (
            torch.per_channel_affine,
            _expanded(1 << 20, 1, torch.double),
            _expanded(1 << 20),
            0,
        ),
    ),
}


@pytest.mark.parametrize("case", list(AMPLIFIED))
def test_values_that_repeat_their_bytes_are_refused(tmp_path: Path, case: str) -> None:
    path = _save(AMPLIFIED[case](), tmp_path / "amplified.pt")
    assert path.stat().st_size < 64 << 10  # a few KB standing for a million values
    with pytest.raises(CorruptCheckpointError, match=r"repeats its storage|contiguous"):
        torch.load(path)


def test_strided_nested_offsets_are_live_in_torch(tmp_path: Path) -> None:
    """Without sandboxload torch builds this tensor: "contiguous", 8 elements, over a
    4-element buffer (an op such as layer_norm then writes past its output)."""
    path = _save(AMPLIFIED["nested offsets strided"](), tmp_path / "live.pt")
    loaded = _torch_load(path)
    assert loaded.is_contiguous()
    assert int(loaded._nested_tensor_size().prod(1).sum()) == 8
    assert loaded.untyped_storage().nbytes() == 4 * 4
