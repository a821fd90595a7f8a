"""Remote code is refused before any file of the model is copied or any module it names is
imported, at every dynamic-code entry point, through the calls users make; the refusal
reaches the caller; with remote code allowed, everything is as upstream.

Each run is a fresh interpreter (``RUNNER``) over a fresh copy of every case's folder:
without sandboxload (proof that each case runs its code upstream), with sandboxload's
default policy, and with ``SANDBOXLOAD_REMOTE_CODE=allow``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import transformers

from .helpers import PY, clean_env
from .remote_models import CASES, RUNNER

MAJOR = transformers.__version__.split(".")[0]


def live_here(name: str) -> bool:
    return CASES[name].live_on in ("both", MAJOR)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def run(tmp: Path, **env: str) -> tuple[dict[str, Any], Path]:
    """Build every case afresh under ``tmp``, run them all in one interpreter."""
    models, canaries, modules = tmp / "models", tmp / "canaries", tmp / "hf_modules"
    canaries.mkdir(parents=True)
    jobs = {}
    for name, case in CASES.items():
        path = case.build(models / name, name)
        jobs[name] = (str(path), case.call)
    before = files_under(tmp)
    out = tmp / "results.json"
    proc = subprocess.run(
        [PY, "-c", RUNNER, json.dumps(jobs), str(out)],
        env=clean_env(
            EVIL_CANARY_DIR=str(canaries),
            HF_MODULES_CACHE=str(modules),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            **env,
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    results["__written__"] = sorted(files_under(tmp) - before - {"results.json"})
    return results, modules


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run(tmp_path_factory.mktemp("upstream"))[0]


def test_every_case_runs_code_upstream(upstream: dict[str, Any]) -> None:
    """Without sandboxload, each case (where this stack runs it) executes the folder's code:
    the refusals below are what stops it."""
    dead = [n for n in CASES if live_here(n) and not upstream[n]["ran"]]
    assert dead == [], {n: upstream[n] for n in dead}
    assert any(r["this_imported"] for n, r in upstream.items() if n in CASES)
    assert any(w.startswith("hf_modules/") for w in upstream["__written__"])


def test_refused_before_anything_is_copied_or_imported(tmp_path: Path) -> None:
    results, _ = run(tmp_path, SANDBOXLOAD="1")
    for name in CASES:
        r = results[name]
        assert not r["ran"], (name, r)
        assert not r["this_imported"], (name, r)  # check_imports never ran
        if live_here(name):
            assert r["outcome"].startswith("RemoteCodeRefusedError"), (name, r)
        else:  # upstream would not run it on this stack either: refused or loaded, no code
            assert r["outcome"] == "loaded" or r["outcome"].startswith("RemoteCodeRefusedError"), (
                name,
                r,
            )
    outcome = results["auto_map-model"]["outcome"]  # names the model, and the way out
    assert str(tmp_path / "models" / "auto_map-model") in outcome
    assert "SANDBOXLOAD_REMOTE_CODE=allow" in outcome
    # Nothing copied into the modules cache, nothing written anywhere else.
    assert results["__written__"] == [], results["__written__"]


def test_allowed_is_upstream(upstream: dict[str, Any], tmp_path: Path) -> None:
    results, _ = run(tmp_path, SANDBOXLOAD="1", SANDBOXLOAD_REMOTE_CODE="allow")
    for name in CASES:
        assert results[name]["ran"] == upstream[name]["ran"], name
        assert results[name]["outcome"].split(":")[0] == upstream[name]["outcome"].split(":")[0]
