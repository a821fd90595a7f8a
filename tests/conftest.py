"""Fixtures: benign and malicious checkpoints written by torch.save, a canary that must never
appear, this process activated, and one audit log."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Payload, resources


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "CANARY"
    yield path
    assert not path.exists(), "a payload ran: the canary file exists"


@pytest.fixture
def checkpoints(tmp_path: Path) -> dict[str, Path]:
    """Benign checkpoints in every form torch.save writes, and safetensors."""
    import safetensors.torch
    import torch

    sd = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(3)}
    out = {
        "zip": tmp_path / "model.pt",
        "legacy": tmp_path / "legacy.pt",
        "raw_bin": tmp_path / "pytorch_model.bin",
        "safetensors": tmp_path / "m.safetensors",
        "st_named_bin": tmp_path / "st.bin",
    }
    torch.save(sd, out["zip"])
    torch.save(sd, out["legacy"], _use_new_zipfile_serialization=False)
    out["raw_bin"].write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    safetensors.torch.save_file(sd, str(out["safetensors"]))
    out["st_named_bin"].write_bytes(out["safetensors"].read_bytes())
    return out


@pytest.fixture
def malicious(tmp_path: Path, canary: Path) -> dict[str, Path]:
    """The same payload as a raw pickle, a torch zip and a legacy torch file."""
    import torch

    obj = {"weight": torch.zeros(2), "evil": Payload(canary)}
    out = {
        "raw": tmp_path / "evil.bin",
        "zip": tmp_path / "evil_zip.pt",
        "legacy": tmp_path / "evil_legacy.pt",
    }
    out["raw"].write_bytes(pickle.dumps(Payload(canary), protocol=2))
    torch.save(obj, out["zip"])
    torch.save(obj, out["legacy"], _use_new_zipfile_serialization=False)
    return out


@pytest.fixture
def sandboxed(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process activated, with no SANDBOXLOAD_* setting: the defaults (sandbox mode)."""
    import sandboxload

    for k in list(os.environ):
        if k.startswith("SANDBOXLOAD_"):
            monkeypatch.delenv(k)
    sandboxload.activate(export_env=False)


@pytest.fixture
def audit_log(sandboxed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Activated, offline for Hugging Face, every load decision audited to this file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SANDBOXLOAD_AUDIT_LOG", str(log))
    return log


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """The test leaves no child process, descriptor or memfd behind (the ready spare aside)."""
    before = resources()
    yield
    assert resources() == before
