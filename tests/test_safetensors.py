"""safetensors entry points: validated headers, zero-copy loads, every file audited."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from sandboxload.errors import InvalidSafetensorsError

from .helpers import audited


def st_file(tmp_path: Path, name: str = "m.safetensors") -> tuple[Path, dict[str, torch.Tensor]]:
    sd = {"w": torch.randn(64, 32), "b": torch.arange(5), "h": torch.ones(3, dtype=torch.bfloat16)}
    path = tmp_path / name
    safetensors.torch.save_file(sd, str(path), metadata={"format": "pt"})
    return path, sd


def raw_file(
    tmp_path: Path, header: object, data: bytes = b"", raw_header: bytes | None = None
) -> Path:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def test_every_entry_point_loads_and_is_audited(audit_log: Path, tmp_path: Path) -> None:
    path, sd = st_file(tmp_path)
    got = safetensors.torch.load_file(str(path))
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_slice("w")[2:4], sd["w"][2:4])
        assert f.metadata() == {"format": "pt"}
    model = torch.nn.Module()
    model.w, model.b, model.h = (
        torch.nn.Parameter(torch.zeros_like(sd[k]), requires_grad=False) for k in ("w", "b", "h")
    )
    safetensors.torch.load_model(model, str(path))
    assert torch.equal(model.w, sd["w"])
    got = safetensors.torch.load(path.read_bytes())
    assert torch.equal(got["b"], sd["b"])
    log = audited(audit_log)
    assert [e["api"] for e in log] == ["safetensors.safe_open"] * 3 + ["safetensors.torch.load"]
    assert all(e["decision"] == "loaded" and e["route"] == "safetensors" for e in log)
    assert log[0]["file"] == str(path) and log[0]["bytes"] == path.stat().st_size


def test_zero_copy(sandboxed: None, tmp_path: Path) -> None:
    """Tensors are views of a private mapping of the very file, not copies."""
    path, _ = st_file(tmp_path)
    t = safetensors.torch.load_file(str(path))["w"]
    ptr = t.data_ptr()
    maps = Path("/proc/self/maps").read_text().splitlines()
    inode = path.stat().st_ino
    mapped = [m for m in maps if m.split()[4] == str(inode)]
    assert any(
        int(m.split()[0].split("-")[0], 16) <= ptr < int(m.split()[0].split("-")[1], 16)
        for m in mapped
    ), "tensor memory is not a mapping of the file"


BAD = {
    "header past the end": dict(raw_header=b"{}", data=b"", header=None),
    "not JSON": dict(raw_header=b"{not json}", header=None),
    "duplicate key": dict(
        raw_header=b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": '
        b'[0, 1]}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}',
        data=b"x",
        header=None,
    ),
    "unknown dtype": dict(
        header={"a": {"dtype": "X9", "shape": [1], "data_offsets": [0, 1]}}, data=b"x"
    ),
    "size mismatch": dict(
        header={"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, data=b"xxxx"
    ),
    "negative shape": dict(header={"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}),
    "gap": dict(header={"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, data=b"xx"),
    "overlap": dict(
        header={
            "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
            "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]},
        },
        data=b"xxx",
    ),
    "trailing data": dict(
        header={"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, data=b"xx"
    ),
    "huge shape": dict(
        header={"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 4]}},
        data=b"xxxx",
    ),
    "bad metadata": dict(header={"__metadata__": {"a": 1}}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_headers_are_refused(audit_log: Path, tmp_path: Path, case: str) -> None:
    spec = dict(BAD[case])
    header = spec.pop("header", None)
    if header is None and "raw_header" not in spec:
        header = {}
    path = raw_file(tmp_path, header, **spec)
    if case == "header past the end":
        path.write_bytes(struct.pack("<Q", 1 << 20) + b"{}")
    for load in (
        lambda: safetensors.torch.load_file(str(path)),
        lambda: safetensors.safe_open(str(path), framework="pt"),
        lambda: safetensors.torch.load(path.read_bytes()),
    ):
        with pytest.raises(InvalidSafetensorsError) as info:
            load()
        assert "not a valid safetensors file" in str(info.value)
    assert str(path) in str(info.value) or "<bytes>" in str(info.value)
    assert all(e["decision"] == "refused" for e in audited(audit_log))


def test_pickle_renamed_safetensors_is_refused(audit_log: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(InvalidSafetensorsError, match="torch-zip"):
        safetensors.torch.load_file(str(path))
    assert audited(audit_log)[-1]["decision"] == "refused"
