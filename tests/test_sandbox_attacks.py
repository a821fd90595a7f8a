"""Attacks: malicious checkpoints through the patched torch.load never run anything."""

from __future__ import annotations

import contextlib
import json
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

import sandboxload
from sandboxload.errors import SandboxLoadError

from . import attacks
from .helpers import PY, clean_env

LIVE_CHECK = """
import json, os, sys, torch
out = {}
for path, canary in json.loads(sys.argv[1]):
    try:
        torch.load(path, weights_only=False)
    except BaseException:
        pass
    out[path] = os.path.exists(canary)
with open(sys.argv[2], "w") as f:  # not stdout: some payloads print
    json.dump(out, f)
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path, Path]]:
    """(label, file, canary) for every technique in every form, and the container tricks."""
    d = tmp_path_factory.mktemp("attacks")
    out = []
    for i, technique in enumerate(attacks.TECHNIQUES):
        for form, wrap in attacks.FORMS.items():
            canary = d / f"canary-{i}-{form}"
            path = d / f"attack-{i}-{form}.bin"
            path.write_bytes(wrap(attacks.payload(technique, canary)))
            out.append((f"{technique} [{form}]", path, canary))
    for j, label in enumerate(attacks.zip_tricks(d / "unused")):
        canary = d / f"canary-zip-{j}"
        data = attacks.zip_tricks(canary)[label]
        path = d / f"zip-trick-{j}.pt"
        path.write_bytes(data)
        out.append((label, path, canary))
    return out


def test_techniques_are_many_different_gadgets(tmp_path: Path) -> None:
    """Many techniques, not one: every payload differs, and together they name at least
    twenty different callables (some payloads are deliberately malformed pickles)."""
    import pickletools

    payloads = [attacks.payload(t, tmp_path / "c") for t in attacks.TECHNIQUES]
    assert len(set(payloads)) == len(payloads)
    named = set()
    for data in payloads:
        with contextlib.suppress(ValueError):
            named |= {
                arg for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "INST")
            }
    assert len(named) >= 20, sorted(named)


def test_every_technique_is_live_without_sandboxload(corpus: list[tuple[str, Path, Path]]) -> None:
    """Without sandboxload, torch.load(weights_only=False) runs each technique in each form.

    This is what makes the protected test meaningful: each file really is an attack."""
    jobs = [(str(p), str(c)) for _, p, c in corpus]
    result = corpus[0][1].parent / "live.json"
    proc = subprocess.run(
        [PY, "-c", LIVE_CHECK, json.dumps(jobs), str(result)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    live = json.loads(result.read_text())
    dead = [label for label, p, _ in corpus if not live[str(p)] and not label.startswith("zip:")]
    assert dead == []
    # Container tricks: these are live against torch.load itself.
    for label, p, _ in corpus:
        if label in (
            "zip: compressed data.pkl",
            "zip: local/central name mismatch",
            "zip: legacy payload polyglot",
        ):
            assert live[str(p)], label
    for _, _, canary in corpus:
        canary.unlink(missing_ok=True)


@pytest.fixture
def protected(sandboxed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def test_no_attack_runs_through_the_sandbox(
    protected: None, corpus: list[tuple[str, Path, Path]]
) -> None:
    outcomes = {}
    for label, path, canary in corpus:
        try:
            torch.load(path, weights_only=False, pickle_module=pickle)
        except SandboxLoadError as exc:
            outcomes[label] = type(exc).__name__
        else:
            outcomes[label] = "LOADED"
        assert not canary.exists(), f"{label}: the payload ran"
    assert "LOADED" not in outcomes.values(), outcomes
    # A pickle gadget is stopped at the allowlist, before anything is even looked up.
    assert outcomes["os.system [zip]"] == "UnsafeGlobalError"
    assert outcomes["zip: TorchScript disguise"] == "TorchScriptRefusedError"


def test_attack_through_other_routes(protected: None, corpus: list[tuple[str, Path, Path]]) -> None:
    import io

    label, path, canary = corpus[0]
    with pytest.raises(SandboxLoadError):
        torch.serialization.load(io.BytesIO(path.read_bytes()), weights_only=False)
    with open(path, "rb") as f, pytest.raises(SandboxLoadError):
        torch.load(f, weights_only=False)
    with pytest.raises(SandboxLoadError):
        sandboxload.load(path)
    assert not canary.exists(), label
