"""refuse mode: every pickle-based checkpoint is refused through every torch.load route."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
import torch

import sandboxload
from sandboxload.errors import PickleRefusedError, TorchScriptRefusedError, UnsupportedFormatError

from .helpers import (
    clean_env,
    run_py,
)


@pytest.fixture(autouse=True)
def active(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("SANDBOXLOAD_POLICY", "SANDBOXLOAD_AUDIT_LOG"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SANDBOXLOAD_PICKLE", "refuse")
    sandboxload.activate(export_env=False)


def routes() -> list[object]:
    from torch import load as bound_after_activation

    return [torch.load, torch.serialization.load, bound_after_activation]


CALLER_ESCAPES = [
    {},
    {"weights_only": False},
    {"weights_only": True},
    {"weights_only": False, "pickle_module": pickle},
    {"weights_only": False, "mmap": True},
    {"map_location": "cpu", "weights_only": False},
]


@pytest.mark.parametrize("kind", ["zip", "legacy", "raw_bin"])
@pytest.mark.parametrize("kwargs", CALLER_ESCAPES)
def test_benign_pickles_are_refused_whatever_the_caller_asks(
    checkpoints: dict[str, Path], kind: str, kwargs: dict[str, object]
) -> None:
    for load in routes():
        with pytest.raises(PickleRefusedError) as info:
            load(checkpoints[kind], **kwargs)  # type: ignore[operator]
        msg = str(info.value)
        assert str(checkpoints[kind]) in msg and "SANDBOXLOAD_PICKLE=sandbox" in msg
        assert isinstance(info.value, pickle.UnpicklingError)


@pytest.mark.parametrize("kind", ["raw", "zip", "legacy"])
def test_payloads_never_run(
    malicious: dict[str, Path], kind: str, canary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    for load in routes():
        for kwargs in CALLER_ESCAPES:
            with pytest.raises(PickleRefusedError):
                load(malicious[kind], **kwargs)  # type: ignore[operator]
    with open(malicious[kind], "rb") as f, pytest.raises(PickleRefusedError):
        torch.load(f, weights_only=False)
    with pytest.raises(PickleRefusedError):
        torch.load(io.BytesIO(malicious[kind].read_bytes()), weights_only=False)
    assert not canary.exists()


def test_the_payload_fixture_is_live(malicious: dict[str, Path], canary: Path) -> None:
    """Without sandboxload the same files do run code: the refusal tests can fail."""
    code = (
        f"import torch; torch.load({str(malicious['zip'])!r}, weights_only=False); "
        f"import os; print(os.path.exists({str(canary)!r}))"
    )
    proc = run_py(code, env=clean_env())
    assert proc.stdout.strip() == "True", proc.stderr
    canary.unlink()


def test_file_objects_and_bytesio(checkpoints: dict[str, Path]) -> None:
    with open(checkpoints["zip"], "rb") as f, pytest.raises(PickleRefusedError) as info:
        torch.load(f)
    assert str(checkpoints["zip"]) in str(info.value)
    with pytest.raises(PickleRefusedError) as info:
        torch.load(io.BytesIO(checkpoints["legacy"].read_bytes()))
    assert "<BytesIO>" in str(info.value)


def test_safetensors_still_loads_through_torch_load(checkpoints: dict[str, Path]) -> None:
    import safetensors.torch

    want = safetensors.torch.load_file(str(checkpoints["safetensors"]))
    for source in (checkpoints["safetensors"], checkpoints["st_named_bin"]):
        got = torch.load(source, weights_only=False)
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k])
    got = torch.load(io.BytesIO(checkpoints["safetensors"].read_bytes()), map_location="meta")
    assert all(t.device.type == "meta" for t in got.values())


def test_torchscript_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(TorchScriptRefusedError, match="TorchScript"):
        torch.load(path, weights_only=False)


def test_numpy_file_gets_a_typed_error(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    path = tmp_path / "a.npy"
    np.save(path, np.arange(3))
    with pytest.raises(UnsupportedFormatError, match=r"numpy\.load"):
        torch.load(path)


def test_allow_mode_runs_the_original_and_audits(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SANDBOXLOAD_PICKLE", "allow")
    monkeypatch.setenv("SANDBOXLOAD_AUDIT_LOG", str(log))
    got = torch.load(checkpoints["zip"], weights_only=True)
    assert torch.equal(got["w"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    monkeypatch.setenv("SANDBOXLOAD_PICKLE", "refuse")
    with pytest.raises(PickleRefusedError):
        torch.load(checkpoints["zip"])
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["decision"] for x in lines] == ["allowed", "refused"]
    assert lines[0]["file"] == str(checkpoints["zip"]) and lines[0]["format"] == "torch-zip"
    assert lines[0]["bytes"] == checkpoints["zip"].stat().st_size


def test_patched_signature_is_torchs() -> None:
    import inspect

    from sandboxload.patches.registry import TORCH_LOAD, original

    assert inspect.signature(torch.load) == inspect.signature(original(TORCH_LOAD))
    assert torch.load is torch.serialization.load
    assert not hasattr(torch.load, "__wrapped__")


def test_missing_file_is_the_usual_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        torch.load(tmp_path / "nope.pt")


def test_library_load_does_not_need_activation(checkpoints: dict[str, Path]) -> None:
    proc = run_py(
        "import os; os.environ['SANDBOXLOAD_PICKLE'] = 'refuse'\n"
        "import sandboxload, sys\n"
        f"sd = sandboxload.load({str(checkpoints['safetensors'])!r})\n"
        "print(sorted(sd), sandboxload.is_active())\n"
        f"try:\n    sandboxload.load({str(checkpoints['zip'])!r})\n"
        "except sandboxload.PickleRefusedError:\n    print('refused')\n"
    )
    assert proc.stdout.split("\n")[:2] == ["['b', 'w'] False", "refused"], proc.stderr
