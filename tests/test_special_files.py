"""A weight file that is a FIFO, a device, a socket or a directory never blocks or feeds the
parent: every entry point refuses it at once with NotARegularFileError naming the file.

Each check runs in its own interpreter under a timeout: before this was fixed, opening a FIFO
blocked forever, before any sandbox deadline applied.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from .helpers import PY, add_dense, clean_env, copy_model, run_cli

PROBE = """
import json, sys
import safetensors, safetensors.torch, torch, sandboxload
path = sys.argv[1]
calls = {
    "torch.load": lambda: torch.load(path),
    "sandboxload.load": lambda: sandboxload.load(path),
    "safetensors.torch.load_file": lambda: safetensors.torch.load_file(path),
    "safetensors.safe_open": lambda: safetensors.safe_open(path, framework="pt"),
}
out = {}
for name, call in calls.items():
    try:
        call()
        out[name] = "loaded"
    except sandboxload.NotARegularFileError as exc:
        out[name] = "refused" if path in str(exc) and exc.kind in str(exc) else str(exc)
    except BaseException as exc:
        out[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def special(tmp_path: Path, kind: str, name: str = "pytorch_model.bin") -> Path:
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    return path


KINDS = ["fifo", "device", "directory", "socket"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_loader_refuses_at_once(tmp_path: Path, kind: str) -> None:
    path = special(tmp_path, kind)
    proc = subprocess.run(
        [PY, "-c", PROBE, str(path)],
        env=clean_env(SANDBOXLOAD="1"),
        capture_output=True,
        text=True,
        timeout=120,  # a blocked open() fails the test here
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert set(result.values()) == {"refused"}, result


def test_the_cli_refuses_at_once(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    fifo = special(models, "fifo", "model.safetensors")
    proc = run_cli("scan", "--json", str(models), timeout=120)
    [row] = [json.loads(x) for x in proc.stdout.splitlines()]
    assert proc.returncode == 1 and row["verdict"] == "refused"
    assert "NotARegularFileError" in row["detail"]
    proc = run_cli("pin", "--manifest", str(tmp_path / "SUMS"), str(models), timeout=120)
    assert proc.returncode == 2 and str(fifo) in proc.stderr
    assert not (tmp_path / "SUMS").exists()
    (tmp_path / "SUMS").write_text(f"{'0' * 64}  models/model.safetensors\n")
    proc = run_cli("verify", "--manifest", str(tmp_path / "SUMS"), timeout=120)
    assert proc.returncode == 1 and "REFUSED" in proc.stdout


def test_through_sentence_transformers(tmp_path: Path) -> None:
    """The call a user makes: a model folder whose Dense module's weight file is a FIFO
    (sentence-transformers checks that it exists, then torch.load opens it)."""
    model = copy_model(tmp_path / "m")
    dense = add_dense(model, "torch.nn.modules.activation.Tanh")
    (dense / "pytorch_model.bin").unlink()
    fifo = special(dense, "fifo")
    code = (
        "import sandboxload\n"
        "from sentence_transformers import SentenceTransformer\n"
        "try:\n"
        f"    SentenceTransformer({str(model)!r}, device='cpu')\n"
        "except sandboxload.NotARegularFileError as exc:\n"
        "    print('refused', exc.file)\n"
    )
    proc = subprocess.run(
        [PY, "-c", code],
        env=clean_env(SANDBOXLOAD="1", HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout.split() == ["refused", str(fifo)], proc.stderr[-3000:]
