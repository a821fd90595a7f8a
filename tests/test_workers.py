"""Servers with several worker processes, started through the wrapper, answering real HTTP on
127.0.0.1: uvicorn ``--workers 2`` (workers started with multiprocessing's spawn) and gunicorn
with uvicorn-worker's ``UvicornWorker`` (workers forked), with and without ``--preload``.

The app (:data:`APP`, written to a temporary directory) is a small model server: it loads a
sentence-transformers encoder (a pickle copy of MiniLM) when its module is imported -- in
gunicorn's master with ``--preload``, else in each worker -- and, when each worker starts
(lifespan), every task head in a directory with ``torch.load(weights_only=False)``, as many
servers load training checkpoints. One head is benign, one carries an ``os.system`` payload.
``GET /answer`` returns the worker's pid and, per head, scores computed from the weights or
the type of the error its load raised (a head that fails to load is reported, not fatal, so
every worker stays up to say so; a server that dies of it is ``test_infinity``'s case).

Each worker is reached over HTTP: ``/answer`` holds its worker's event loop until every worker
has answered once, so the test's next request can only be accepted by a worker that has not
answered yet.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

import sandboxload
from sandboxload.cli.wrapper import SITE_DIR
from sandboxload.sandbox.protocol import ZYGOTE_ARG

from .helpers import PY, Payload, Server, audited, free_port, pickle_copy, server_env

pytestmark = pytest.mark.slow  # real servers, each worker importing torch and a model

WORKERS = 2
BIN = Path(sys.executable).parent
REFUSED = "sandboxload.errors.UnsafeGlobalError"

APP = '''
"""A model server (written by tests/test_workers.py): see that module's docstring."""

import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from sentence_transformers import SentenceTransformer

SENTENCES = ["sandboxload keeps weights inert", "A second, longer sentence to embed here."]
HEADS = Path(os.environ["WORKERS_APP_HEADS"])
BARRIER = Path(os.environ["WORKERS_APP_BARRIER"])
WORKERS = int(os.environ["WORKERS_APP_WORKERS"])

encoder = SentenceTransformer(os.environ["WORKERS_APP_MODEL"], device="cpu")
heads = {}


def load_heads():
    out = {}
    for path in sorted(HEADS.glob("*.pt")):
        try:
            sd = torch.load(path, weights_only=False)
            out[path.stem] = (sd["weight"], sd["bias"])
        except Exception as exc:  # one bad head must not take the other tasks down
            out[path.stem] = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return out


@asynccontextmanager
async def lifespan(app):
    heads.update(load_heads())
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health():
    return {"pid": os.getpid()}


@app.get("/answer")
async def answer():
    embeddings = encoder.encode(SENTENCES, convert_to_tensor=True)
    body = {"pid": os.getpid(), "heads": {}}
    for name, head in heads.items():
        if isinstance(head, str):
            body["heads"][name] = head
        else:
            body["heads"][name] = (embeddings @ head[0].T + head[1]).tolist()
    # Hold this worker's event loop (it accepts no connection meanwhile) until every worker
    # has answered once: the client's next request then reaches another worker.
    (BARRIER / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(os.listdir(BARRIER)) < WORKERS and time.monotonic() < deadline:
        time.sleep(0.05)
    return body
'''


def wait_for(
    what: str,
    ready: Callable[[], bool],
    server: Server,
    timeout: float = 300,
    canary: Path | None = None,
) -> None:
    """Poll ``ready`` until it holds; fail at once if the server exited or the ``canary``
    exists (a payload ran), else after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert canary is None or not canary.exists(), f"a payload ran before {what}"
        assert server.proc.poll() is None, f"exited before {what}:\n{server.output()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout}s:\n{server.output()[-4000:]}"
        time.sleep(0.1)


def get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=180) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    return body


def answer_from_each_worker(server: Server, barrier: Path, workers: int) -> list[dict[str, Any]]:
    """One ``/answer`` from each of ``workers`` workers: each request is sent once the previous
    one's worker holds its loop (its pid is in ``barrier``), so another worker accepts it."""
    results: list[dict[str, Any]] = [{} for _ in range(workers)]
    failed: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            results[i] = get(server.port, "/answer")
        except BaseException as exc:  # reported by the waiting test, not lost in the thread
            failed.append(exc)

    def answered(i: int) -> bool:
        assert not failed, f"/answer {i + 1} failed: {failed[0]!r}\n{server.output()[-4000:]}"
        return len(os.listdir(barrier)) > i

    threads = []
    for i in range(workers):
        threads.append(threading.Thread(target=ask, args=(i,), daemon=True))
        threads[-1].start()
        wait_for(f"answer {i + 1}", lambda i=i: answered(i), server)
    for thread in threads:
        thread.join(180)
        assert not thread.is_alive(), "an /answer did not return"
    assert all(results), results
    return results


class Site:
    """What one server run reads: the app, the encoder folder, its heads, a barrier."""

    def __init__(self, root: Path, model: Path, canary: Path, workers: int) -> None:
        root.mkdir()
        (root / "app.py").write_text(APP)
        self.root = root
        self.canary = canary
        self.heads = root / "heads"
        self.heads.mkdir()
        self.barrier = root / "barrier"
        self.barrier.mkdir()
        self.audit = root / "audit.jsonl"
        torch.manual_seed(0)
        linear = torch.nn.Linear(384, 4)
        head = {"weight": linear.weight.data, "bias": linear.bias.data}
        torch.save(head, self.heads / "topic.pt")
        torch.save({**head, "x": Payload(canary)}, self.heads / "evil.pt")
        self.env = server_env(
            WORKERS_APP_MODEL=str(model),
            WORKERS_APP_HEADS=str(self.heads),
            WORKERS_APP_BARRIER=str(self.barrier),
            WORKERS_APP_WORKERS=str(workers),
            SANDBOXLOAD_AUDIT_LOG=str(self.audit),
            TRANSFORMERS_OFFLINE="1",
        )

    def start(self, cmd: list[str], port: int) -> Server:
        return Server(cmd, port=port, model="", log=self.root / "server.log", env=self.env)

    def pids(self, file: str, decision: str) -> set[int]:
        """The pids of the processes that audited ``decision`` on ``file`` (a path under the
        site or the encoder's folder)."""
        return {
            e["pid"]
            for e in audited(self.audit)
            if e["file"].endswith(file) and e["decision"] == decision
        }


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM re-saved as a pickle: the encoder loads through the sandbox."""
    return pickle_copy(tmp_path_factory.mktemp("workers") / "minilm-pickle")


@pytest.fixture(scope="module")
def unprotected(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The app's answer from a plain uvicorn (one process, no sandboxload). Its ``evil`` head
    loaded: the payload is live (the canary exists), so refusing it below is a real block."""
    tmp = tmp_path_factory.mktemp("unprotected")
    canary = tmp / "CANARY-live"
    site = Site(tmp / "site", model, canary, workers=1)
    site.env.pop("SANDBOXLOAD_AUDIT_LOG")
    port = free_port()
    cmd = [str(BIN / "uvicorn"), "app:app", "--app-dir", str(site.root)]
    server = site.start([*cmd, "--host", "127.0.0.1", "--port", str(port)], port)
    try:
        assert server.wait_ready(), server.output()[-4000:]
        body = get(port, "/answer")
    finally:
        server.stop()
    assert canary.exists(), "the payload did not run without sandboxload"
    assert not isinstance(body["heads"]["evil"], str), body
    assert not site.audit.exists()
    return body


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers the test starts; each is stopped (its whole process group), then every
    process it had started must be gone (sandbox workers run in sessions of their own)."""
    started: list[Server] = []
    yield started
    for server in started:
        try:
            tree = [
                server.proc.pid,
                *(p.pid for p in psutil.Process(server.proc.pid).children(True)),
            ]
        except psutil.NoSuchProcess:
            tree = []
        server.stop()
        deadline = time.monotonic() + 60
        while (left := [p for p in tree if alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:  # reported below, but not left running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left behind: {left}"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wrapped(*command: str, python: str = PY) -> list[str]:
    return [python, "-m", "sandboxload", *command]


def uvicorn(site: Site, port: int, python: str = PY) -> list[str]:
    return wrapped(
        "uvicorn", "app:app", "--app-dir", str(site.root), "--workers", str(WORKERS),
        "--host", "127.0.0.1", "--port", str(port), python=python,
    )  # fmt: skip


def gunicorn(site: Site, port: int, *extra: str) -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS

    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        # gunicorn 25+ listens on ~/.gunicorn/gunicorn.ctl by default, one path for every
        # master of the machine: tests running side by side would take it from each other.
        extra = ("--no-control-socket", *extra)
    return wrapped(
        # uvicorn.workers is deprecated since uvicorn 0.30: uvicorn-worker's class replaces it.
        "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", str(WORKERS),
        "-b", f"127.0.0.1:{port}", "--chdir", str(site.root), "--timeout", "600", *extra,
        "app:app",
    )  # fmt: skip


def serve_and_check(
    site: Site, cmd: list[str], port: int, servers: list[Server], unprotected: dict[str, Any]
) -> tuple[Server, set[int]]:
    """Start ``cmd``; every worker loaded the benign head through the sandbox, refused the
    payload with the typed error, and answers as the unprotected server does. Returns the
    server and its workers' pids."""
    server = site.start(cmd, port)
    servers.append(server)
    wait_for(
        f"a head refused by {WORKERS} processes",
        lambda: len(site.pids("evil.pt", "refused")) >= WORKERS,
        server,
        canary=site.canary,
    )
    answers = answer_from_each_worker(server, site.barrier, WORKERS)
    workers = {a["pid"] for a in answers}
    assert len(workers) == WORKERS, answers
    assert server.proc.pid not in workers  # the supervisor or master serves nothing
    for a in answers:
        assert a["heads"] == {"topic": unprotected["heads"]["topic"], "evil": REFUSED}, a
    log = audited(site.audit)
    for pid in workers:
        mine = {(Path(e["file"]).name, e["route"], e["decision"]) for e in log if e["pid"] == pid}
        assert ("topic.pt", "sandbox", "loaded") in mine, (pid, log)
        assert ("evil.pt", "sandbox", "refused") in mine, (pid, log)
    for e in log:  # whoever loaded what: the pickles went through the sandbox, never in-process
        assert e["route"] == "sandbox", e
        if e["file"].endswith("evil.pt"):
            assert e["decision"] == "refused" and e["reason"].startswith("UnsafeGlobalError"), e
        else:
            assert e["decision"] == "loaded", e
    return server, workers


def encoder_loaders(site: Site, model: Path) -> set[int]:
    return site.pids(str(model / "pytorch_model.bin"), "loaded")


def target_layout(tmp: Path) -> tuple[str, dict[str, str]]:
    """An interpreter that sees this environment's packages, sandboxload among them, only
    through ``PYTHONPATH``, as after ``pip install --target DIR``: a bare venv of this Python.
    ``.pth`` files are read only in site directories, so sandboxload's start-up file is not."""
    venv = tmp / "bare"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    paths = [sysconfig.get_paths()["purelib"], str(Path(sandboxload.__file__).parent.parent)]
    return str(venv / "bin" / "python"), {"PYTHONPATH": os.pathsep.join(paths)}


def test_wrapper_activates_python_children_without_the_startup_file(tmp_path: Path) -> None:
    """Where no site directory holds the start-up ``.pth``, the exported flag alone activates
    nothing in a Python child: the wrapper puts its site dir first on ``PYTHONPATH`` (always:
    whether the wrapper's own interpreter has the file says nothing of a child's)."""
    code = (
        "import os, sys; "
        "print('sandboxload.bootstrap' in sys.modules, os.environ.get('PYTHONPATH'))"
    )
    python, extra = target_layout(tmp_path)

    def child(cmd: list[str], env: dict[str, str]) -> list[str]:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    flagged = server_env(SANDBOXLOAD="1", **extra)
    assert child([python, "-c", code], flagged)[0] == "False"  # why the wrapper must help
    active, path = child(wrapped(python, "-c", code, python=python), server_env(**extra))
    assert active == "True"
    assert path.split(os.pathsep)[1:] == extra["PYTHONPATH"].split(os.pathsep)
    assert child(wrapped(PY, "-c", code), server_env()) == ["True", SITE_DIR]


@pytest.mark.parametrize("layout", ["installed", "target"])
def test_uvicorn_spawned_workers(
    layout: str,
    model: Path,
    unprotected: dict[str, Any],
    servers: list[Server],
    tmp_path: Path,
    canary: Path,
) -> None:
    """``sandboxload uvicorn app:app --workers 2``: uvicorn's supervisor spawns each worker as
    a fresh interpreter, which the exported environment activates; each loads the encoder
    and the heads itself. ``target``: sandboxload and the libraries on ``PYTHONPATH`` only
    (no start-up ``.pth`` read), where the wrapper puts its site dir on ``PYTHONPATH`` too."""
    site = Site(tmp_path / "site", model, canary, WORKERS)
    python = PY
    if layout == "target":
        python, extra = target_layout(tmp_path)
        site.env.update(extra)
    port = free_port()
    cmd = uvicorn(site, port, python)
    server, workers = serve_and_check(site, cmd, port, servers, unprotected)
    assert workers <= encoder_loaders(site, model)
    assert server.proc.pid not in {e["pid"] for e in audited(site.audit)}


def master_spares(master: int) -> list[psutil.Process]:
    """The spare sandbox workers the gunicorn master started: forks of its zygote (a child whose
    command line says so; its other children are the forked gunicorn workers)."""
    return [
        p
        for z in psutil.Process(master).children()
        if ZYGOTE_ARG in z.cmdline()
        for p in z.children()
    ]


def test_gunicorn_forked_workers(
    model: Path, unprotected: dict[str, Any], servers: list[Server], tmp_path: Path, canary: Path
) -> None:
    """gunicorn without ``--preload``: the master imports no app (nothing loaded, no spare
    started there); each forked worker imports the app, so loads everything itself."""
    site = Site(tmp_path / "site", model, canary, WORKERS)
    port = free_port()
    server, workers = serve_and_check(site, gunicorn(site, port), port, servers, unprotected)
    assert workers <= encoder_loaders(site, model)
    assert server.proc.pid not in {e["pid"] for e in audited(site.audit)}
    assert master_spares(server.proc.pid) == []


def test_gunicorn_preload_no_worker_uses_the_masters_spare(
    model: Path, unprotected: dict[str, Any], servers: list[Server], tmp_path: Path, canary: Path
) -> None:
    """gunicorn ``--preload``: the master loads the encoder through the sandbox, which leaves
    it a spare sandbox worker, then forks the workers; each worker's head loads must not hand
    the heads to that inherited spare. A spare serves one file and exits, and the master loads
    nothing after the fork, so the master's spare -- started before any worker was forked --
    still waiting when every worker has loaded both heads is what proves that no worker used
    it. (With spare.py's fork guards removed -- the at-fork reset, the owner checks, and the
    zygote's liveness poll, which fails in a process that is not the zygote's parent -- a
    worker hands its first head to that spare and this test fails: no spare is left in the
    master.) The master's spare is a fork of its zygote."""
    site = Site(tmp_path / "site", model, canary, WORKERS)
    port = free_port()
    cmd = gunicorn(site, port, "--preload")
    server, workers = serve_and_check(site, cmd, port, servers, unprotected)
    master = server.proc.pid
    assert encoder_loaders(site, model) == {master}  # loaded once, before the fork
    spares = master_spares(master)
    assert len(spares) == 1, spares
    forked = min(psutil.Process(pid).create_time() for pid in workers)
    assert spares[0].create_time() <= forked, "the master's spare started after the fork"
    assert spares[0].status() != psutil.STATUS_ZOMBIE
