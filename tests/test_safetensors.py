"""safetensors entry points: validated headers, zero-copy loads, every file audited."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch

from sandboxload.errors import InvalidSafetensorsError
from sandboxload.patches._common import is_patched

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


# --- every entry point that opens or parses data is gated (issue 10, class 2) -------------

# Parameters through which a safetensors callable receives data to open or parse.
DATA_PARAMS = {"filename", "f", "data", "bytes", "buffer", "handle", "path", "file", "stream"}
# Callables with such a parameter that only write (checked to exist, so the list stays true).
WRITERS = {"save", "save_file", "save_model", "serialize", "serialize_file"}


def _safetensors_modules() -> tuple[list[Any], list[str]]:
    """safetensors, its Rust module and every framework module; those whose framework is
    not installed are returned by name, for a check of their source."""
    import importlib
    import pkgutil

    mods: list[Any] = [safetensors, safetensors._safetensors_rust]
    missing = []
    for info in pkgutil.iter_modules(safetensors.__path__):
        if info.name.startswith("_"):
            continue
        try:
            mods.append(importlib.import_module(f"safetensors.{info.name}"))
        except ImportError:
            missing.append(info.name)
    return mods, missing


def _data_callables() -> dict[str, tuple[Any, Any]]:
    """Every callable safetensors defines (or re-exports) that takes data, by qualified name."""
    import inspect

    rust = set(map(id, vars(safetensors._safetensors_rust).values()))
    found = {}
    for module in _safetensors_modules()[0]:
        for name, obj in vars(module).items():
            if name.startswith("__") or not callable(obj) or isinstance(obj, type(json)):
                continue
            defined_here = str(getattr(obj, "__module__", "")).startswith("safetensors")
            if not (defined_here or id(obj) in rust or is_patched(obj)):
                continue  # imported from elsewhere (os, torch, numpy, typing)
            try:
                params = set(inspect.signature(obj).parameters)
            except (TypeError, ValueError):
                params = set()
            if params & DATA_PARAMS and name not in WRITERS:
                found[f"{module.__name__}.{name}"] = (obj, params)
    return found


def arguments_of(params: set[str], module: str, path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {
        "filename": str(path),
        "f": open(path, "rb"),  # noqa: SIM115 -- closed by the test
        "data": path.read_bytes(),
        "bytes": path.read_bytes(),
        "framework": "np" if module.endswith("numpy") else "pt",
        "model": torch.nn.Linear(2, 2),
        "device": "cpu",
    }
    unknown = {p for p in params if p not in values} - {
        "strict",
        "backend",
        "args",
        "kwargs",
        "metadata",
    }
    assert not unknown, f"{module}: no test argument for parameters {unknown}: classify it"
    return {p: values[p] for p in params if p in values}


def test_every_safetensors_entry_point_is_gated(
    audit_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Walk safetensors' namespace: every callable that opens or parses data must refuse a
    file the policy refuses (here: safetensors is not an allowed format). An entry point that
    bypasses the gate loads it instead, and this test names it."""
    from sandboxload.errors import FormatNotAllowedError

    path = tmp_path / "plain.safetensors"  # float32 only: every framework module reads it
    safetensors.torch.save_file({"w": torch.ones(3)}, str(path))
    found = _data_callables()
    for name in ("safe_open", "_safe_open_handle", "deserialize"):
        assert f"safetensors.{name}" in found  # the walk sees the Rust entry points
    assert {"safetensors.torch.load", "safetensors.torch.load_file"} <= set(found)
    assert all(hasattr(safetensors.torch, w) for w in WRITERS - {"serialize", "serialize_file"})
    monkeypatch.setenv("SANDBOXLOAD_FORMATS", "torch-zip")
    ungated = []
    for qualified, (fn, params) in sorted(found.items()):
        kwargs = arguments_of(params, qualified.rpartition(".")[0], path)
        try:
            fn(**kwargs)
            ungated.append(qualified)
        except FormatNotAllowedError:
            pass
        except Exception as exc:  # it went past the gate, into a parser
            ungated.append(f"{qualified} ({type(exc).__name__})")
        finally:
            if "f" in kwargs:
                kwargs["f"].close()
    assert not ungated, f"these safetensors entry points load a refused file: {ungated}"
    assert {r["api"] for r in audited(audit_log)} >= {
        "safetensors.safe_open",
        "safetensors._safe_open_handle",
        "safetensors.deserialize",
        "safetensors.torch.load",
    }


def test_framework_modules_that_cannot_import_here_use_only_gated_entry_points() -> None:
    """flax, tensorflow, paddle, mlx are not installed: their source may reach data only
    through names this walk gates (``safe_open``, ``deserialize``, ``numpy.load``)."""
    import ast

    gated = {"safe_open", "deserialize", "numpy"}
    harmless = {"serialize", "serialize_file", "SafetensorError", "TensorSpec"}
    _, missing = _safetensors_modules()
    for name in missing:
        tree = ast.parse((Path(safetensors.__file__).parent / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("safetensors"):
                names = {a.name for a in node.names}
                assert names <= gated | harmless, f"safetensors.{name} imports {names}"
            if isinstance(node, ast.Name):
                assert node.id not in {"open", "_safe_open_handle", "_safetensors_rust"}, name


@pytest.mark.parametrize("kind", ["bytearray", "memoryview"])
def test_bytes_loaders_take_what_safetensors_takes(audit_log: Path, kind: str) -> None:
    """safetensors' bytes entry points take ``bytes`` only; the gate neither widens that
    (a copy of a bytearray would be loaded) nor lets anything through unchecked."""
    data = safetensors.torch.save({"w": torch.ones(2)})
    wrapped = bytearray(data) if kind == "bytearray" else memoryview(data)
    for load in (safetensors.torch.load, safetensors.deserialize):
        with pytest.raises(TypeError, match="bytes"):
            load(wrapped)  # type: ignore[arg-type]
    assert not audit_log.exists() or audited(audit_log) == []


MAP_LOCATIONS = {
    "none": None,
    "cpu": "cpu",
    "device": torch.device("cpu"),
    "meta": "meta",
    "dict": {"cpu": "cpu"},
    "callable": lambda storage, location: storage,
}


@pytest.mark.parametrize("where", list(MAP_LOCATIONS))
def test_a_safetensors_path_through_torch_load_is_what_torch_returns(
    sandboxed: None, tmp_path: Path, where: str
) -> None:
    """torch 2.13 hands a ``.safetensors`` path to ``safetensors.torch.load_file``: the keys
    in file order (not sorted), its device handling, its errors for the forms it refuses."""
    from sandboxload.patches import registry

    sd = {
        "z": torch.ones(1, dtype=torch.float64),
        "a": torch.zeros(2, dtype=torch.int8),
        "m": torch.ones(3, dtype=torch.float16),
        "b": torch.arange(5.0),
    }
    path = tmp_path / "o.safetensors"
    safetensors.torch.save_file(sd, str(path))
    original = registry.original(registry.TORCH_LOAD)
    map_location = MAP_LOCATIONS[where]
    try:
        want = original(str(path), map_location=map_location)
    except Exception as exc:  # torch refuses this form: so must sandboxload, alike
        with pytest.raises(type(exc)) as info:
            torch.load(str(path), map_location=map_location)
        assert str(info.value) == str(exc)
        return
    got = torch.load(str(path), map_location=map_location)
    assert list(got) == list(want) == ["z", "b", "m", "a"]
    for k in want:
        assert (got[k].dtype, got[k].device, got[k].shape) == (
            want[k].dtype,
            want[k].device,
            want[k].shape,
        )
        if want[k].device.type != "meta":
            assert torch.equal(got[k], want[k])


def test_a_pickle_named_safetensors_is_never_unpickled(
    sandboxed: None, tmp_path: Path, canary: Path
) -> None:
    """torch hands the path to safetensors, which rejects it; so does sandboxload, typed."""
    from .helpers import Payload

    path = tmp_path / "evil.safetensors"
    torch.save({"x": Payload(canary)}, path)
    with pytest.raises(InvalidSafetensorsError):
        torch.load(str(path), weights_only=False)
