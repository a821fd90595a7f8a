"""The deployment recipe, ``examples/deploy/`` (the one source docs/deployment.md points to),
run end to end in a scratch root standing in for the image's ``/``: ``build.sh`` copies
MiniLM in, installs the production policy, pins and scans; ``start.sh`` verifies, scans and
runs doctor, then execs a real infinity_emb server through the wrapper, which answers a real
``POST /embeddings`` on 127.0.0.1. Tampering after the build stops start-up before any weight
is loaded; a pickle checkpoint fails the build."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from .helpers import (
    PY,
    SENTENCES,
    Server,
    audited,
    clean_env,
    copy_model,
    encode_unprotected,
    free_port,
    pickle_copy,
    server_env,
    state_dict,
)

REPO = Path(__file__).parent.parent
DEPLOY = REPO / "examples" / "deploy"
DOC = REPO / "docs" / "deployment.md"
INFINITY_STACK = REPO / ".venv-infinity" / "bin" / "python"


def serves_here() -> bool:
    """infinity_emb 0.0.78 starts on this stack (not on transformers 5: test_infinity.py)."""
    try:
        importlib.metadata.version("infinity_emb")
    except importlib.metadata.PackageNotFoundError:
        return False
    return int(importlib.metadata.version("transformers").split(".")[0]) < 5


# The Python the recipe runs with, as an image has one: this one where infinity serves, else
# the stack infinity-emb itself resolves to (scripts/setup.sh's .venv-infinity), if set up.
if serves_here():
    RECIPE_PY: str | None = PY
elif INFINITY_STACK.exists():
    RECIPE_PY = str(INFINITY_STACK)
else:
    RECIPE_PY = None
needs_server = pytest.mark.skipif(RECIPE_PY is None, reason="no stack here serves infinity_emb")
PY_FOR_CHECKS = RECIPE_PY or PY  # build.sh and the start-up checks need no server


def script(name: str, *args: str) -> list[str]:
    return ["bash", str(DEPLOY / name), *args]


def build(tmp_path: Path, *models: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        script("build.sh", *map(str, models)),
        env=clean_env(ROOT=str(tmp_path / "root"), PYTHON=PY_FOR_CHECKS),
        capture_output=True,
        text=True,
        timeout=120,
    )


def start(tmp_path: Path, python: str) -> Server:
    """start.sh on ``tmp_path/root``, serving on a free port of 127.0.0.1."""
    port = free_port()
    root = tmp_path / "root"
    return Server(
        script("start.sh", "--host", "127.0.0.1", "--port", str(port)),
        port=port,
        model=str(root / "models" / "minilm"),
        log=tmp_path / "start.log",
        env=server_env(ROOT=str(root), PYTHON=python),
    )


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """A root built by build.sh from a copy of MiniLM (safetensors): the vetted image."""
    proc = build(tmp_path, copy_model(tmp_path / "vetted" / "minilm"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = tmp_path / "root"
    weights = root / "models" / "minilm" / "model.safetensors"
    assert says(proc.stdout, "OK", "safetensors", str(weights)), proc.stdout + proc.stderr
    # The pin is relative to the manifest, so the image's layout, not the build host's.
    sums = (root / "etc" / "sandboxload" / "SHA256SUMS").read_text().split()
    assert sums[1:] == ["../../models/minilm/model.safetensors"]
    # The installed policy is the documented one, its absolute paths moved under ROOT.
    policy = (root / "etc" / "sandboxload" / "policy.toml").read_text()
    log = root / "var" / "log" / "sandboxload" / "audit.jsonl"
    assert policy == policy_file().replace('"/var/log/sandboxload/audit.jsonl"', f'"{log}"')
    return root


def policy_file() -> str:
    return (DEPLOY / "policy.toml").read_text()


@pytest.mark.slow  # a real server: a model load and a warm-up
@needs_server
def test_recipe_builds_starts_and_serves_like_an_unprotected_load(
    built: Path, tmp_path: Path
) -> None:
    assert RECIPE_PY is not None
    weights = built / "models" / "minilm" / "model.safetensors"
    server = start(tmp_path, RECIPE_PY)
    try:
        # The trusted reference, computed while the server warms up: the same stack's
        # sentence-transformers on the same folder, no sandboxload.
        want = encode_unprotected([weights.parent], python=RECIPE_PY)[str(weights.parent)]
        assert server.wait_ready(), server.output()[-3000:]
        got = server.embed(SENTENCES)
    finally:
        server.stop()
    out = server.output()
    assert says(out, "OK", str(weights)) and says(out, "OK", "safetensors", str(weights))
    assert says(out, "sandbox: ok")  # doctor
    assert got == want  # bit for bit: the same floats
    digest = (built / "etc" / "sandboxload" / "SHA256SUMS").read_text().split()[0]
    log = audited(built / "var" / "log" / "sandboxload" / "audit.jsonl")
    assert log, out[-3000:]
    assert {(e["file"], e["route"], e["decision"], e["sha256"]) for e in log} == {
        (str(weights), "safetensors", "loaded", digest)
    }


def says(output: str, *words: str) -> bool:
    """Some line of ``output`` holds every one of ``words``."""
    return any(all(w in line for w in words) for line in output.splitlines())


def append_a_byte(folder: Path) -> tuple[str, ...]:
    with open(folder / "model.safetensors", "ab") as f:
        f.write(b"\0")
    return "MISMATCH", str(folder / "model.safetensors")


def swap_in_a_pickle(folder: Path) -> tuple[str, ...]:
    torch.save(state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return "MISSING", str(folder / "model.safetensors")


def add_a_pickle(folder: Path) -> tuple[str, ...]:
    """A weight file the manifest does not list: verify, given the models folder, names it."""
    torch.save(state_dict(), folder / "pytorch_model.bin")
    return "UNPINNED", str(folder / "pytorch_model.bin")


@pytest.mark.parametrize("tamper", [append_a_byte, swap_in_a_pickle, add_a_pickle])
def test_tampering_after_the_build_stops_start_up(
    built: Path, tmp_path: Path, tamper: Callable[[Path], tuple[str, ...]]
) -> None:
    message = tamper(built / "models" / "minilm")
    server = start(tmp_path, PY_FOR_CHECKS)
    try:
        assert not server.wait_ready(timeout=120)
    finally:
        server.stop()
    out = server.output()
    assert server.proc.returncode == 1, out[-3000:]
    assert says(out, *message), out[-3000:]
    assert "not starting" in out and "starting infinity_emb" not in out
    assert not (built / "var" / "log" / "sandboxload" / "audit.jsonl").exists()


def test_a_pickle_checkpoint_fails_the_build(tmp_path: Path) -> None:
    proc = build(tmp_path, pickle_copy(tmp_path / "vetted" / "minilm"))
    weights = tmp_path / "root" / "models" / "minilm" / "pytorch_model.bin"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # formats = ["safetensors"] refuses it first (pickle = "refuse" would too).
    assert says(proc.stdout, "REFUSED", str(weights), "FormatNotAllowedError"), proc.stdout
    assert "the image must not be built" in proc.stderr


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, re.S | re.M)


def test_the_doc_shows_the_recipe_files_and_the_dockerfile_calls_the_scripts() -> None:
    doc = DOC.read_text()
    assert policy_file() in blocks(doc, "toml")
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile in blocks(doc, "dockerfile")
    for name in ("build.sh", "start.sh", "policy.toml", "Dockerfile"):
        assert f"examples/deploy/{name}" in doc
    # The Dockerfile copies the recipe in, builds with build.sh, starts with start.sh.
    copied = re.search(r"^COPY examples/deploy/ (/\S+)/$", dockerfile, re.M)
    assert copied, dockerfile
    assert re.search(rf"^RUN .*{re.escape(copied.group(1))}/build\.sh$", dockerfile, re.M)
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)
    assert entry and json.loads(entry.group(1))[-1] == f"{copied.group(1)}/start.sh"
