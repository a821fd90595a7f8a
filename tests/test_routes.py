"""One route function: for every sniffed format and pickle mode, ``scan`` and the patched
``torch.load`` take the same route, and agree on whether the file loads."""

from __future__ import annotations

import contextlib
import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from sandboxload import formats, policy, routes
from sandboxload.errors import SandboxLoadError
from sandboxload.scanning.check import classify

from . import corpus
from .helpers import audited


def _tar(path: Path) -> None:
    t = torch.ones(2)
    corpus.legacy_tar({1: t}, {"w": t}, path)


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "not a checkpoint")


SAMPLES: dict[str, Callable[[Path], object]] = {
    formats.SAFETENSORS: lambda p: safetensors.torch.save_file({"w": torch.ones(2)}, str(p)),
    formats.TORCH_ZIP: lambda p: torch.save({"w": torch.ones(2)}, p),
    formats.TORCH_LEGACY: lambda p: torch.save(
        {"w": torch.ones(2)}, p, _use_new_zipfile_serialization=False
    ),
    formats.TORCH_TAR: _tar,
    formats.TORCHSCRIPT: lambda p: torch.jit.save(torch.jit.script(torch.nn.Linear(1, 1)), str(p)),
    formats.NUMPY: lambda p: np.save(open(p, "wb"), np.arange(3)),  # noqa: SIM115
    formats.PICKLE: lambda p: p.write_bytes(pickle.dumps({"w": [1.0]})),
    formats.ZIP: _zip,
    formats.UNKNOWN: lambda p: p.write_bytes(b"\x00\x01 not a weight file"),
}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    out = {}
    for fmt, build in SAMPLES.items():
        path = d / f"sample-{fmt}.bin"
        build(path)
        out[fmt] = path
    return out


def test_there_is_a_sample_of_every_sniffed_format(samples: dict[str, Path]) -> None:
    assert set(samples) == set(formats.SNIFFED)
    for fmt, path in samples.items():
        assert formats.sniff_path(str(path)) == fmt


@pytest.mark.parametrize("mode", policy.PICKLE_MODES)
def test_scan_and_torch_load_agree(
    samples: dict[str, Path], mode: str, audit_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOXLOAD_PICKLE", mode)
    for fmt, path in samples.items():
        verdict = classify(str(path)).as_dict()
        with contextlib.suppress(Exception):  # the audit line says what happened
            torch.load(path, weights_only=False)  # benign samples; the sandbox ignores it
        entry = audited(audit_log)[-1]
        assert entry["file"] == str(path) and entry["format"] == fmt
        assert verdict["format"] == fmt
        assert verdict["route"] == entry["route"], (mode, fmt, verdict, entry)
        if entry["route"] == routes.IN_PROCESS:
            # Loaded by torch itself, by policy: scan says whether that is plain data.
            assert verdict["verdict"] in ("ok", "unsafe"), (fmt, verdict)
            assert verdict["verdict"] != "ok" or entry["decision"] == "allowed", (fmt, verdict)
        else:
            loads = entry["decision"] == "loaded"
            assert (verdict["verdict"] == "ok") is loads, (mode, fmt, verdict, entry)


def test_route_is_total_and_refusals_name_the_file() -> None:
    """Every format x pickle mode x caller x allowlist has a route; every refusal is typed."""
    for fmt in formats.SNIFFED:
        for mode in policy.PICKLE_MODES:
            for asked in routes.ASKED:
                for allowed in ((), ("safetensors",), formats.POLICY_FORMATS):
                    pol = policy.Policy(pickle=mode, formats=allowed)
                    r = routes.route(fmt, pol, asked)
                    assert r.name in (
                        routes.SAFETENSORS,
                        routes.SANDBOX,
                        routes.IN_PROCESS,
                        routes.REFUSED,
                    )
                    if r.refused:
                        err = r.refusal("/m/file.bin")
                        assert isinstance(err, SandboxLoadError) and "/m/file.bin" in str(err)
                    if r.name == routes.SANDBOX:
                        assert r.reader is not None
                    if asked == routes.SAFETENSORS_ONLY or allowed == ("safetensors",):
                        # Nothing but safetensors is ever parsed for these callers/policies.
                        assert r.name in (routes.SAFETENSORS, routes.REFUSED)


LOADABLE = {formats.SAFETENSORS, formats.TORCH_ZIP, formats.TORCH_LEGACY, formats.TORCH_TAR}


def test_in_memory_streams_take_the_same_routes(samples: dict[str, Path], audit_log: Path) -> None:
    for fmt, path in samples.items():
        expect = contextlib.nullcontext() if fmt in LOADABLE else pytest.raises(SandboxLoadError)
        with expect:
            torch.load(io.BytesIO(path.read_bytes()))
        entry = audited(audit_log)[-1]
        assert entry["file"] == "<BytesIO>" and entry["format"] == fmt
        assert entry["route"] == routes.route(fmt, policy.current()).name
