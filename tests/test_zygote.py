"""The zygote: workers are forks of one fork server per process, one per file, unable to
reach it; violations, timeouts and a dead zygote are what they were with spawned workers;
it dies with its parent and is never used by a forked child. Real processes throughout."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import psutil
import pytest
import torch

from sandboxload import policy
from sandboxload.errors import SandboxCrashedError, SandboxTimeoutError, SandboxViolationError
from sandboxload.patches import registry
from sandboxload.sandbox import load as sandbox_load
from sandboxload.sandbox import spare
from sandboxload.sandbox.protocol import PROBES, READ_ZIP, ZYGOTE_ARG

from .attacks import torch_zip
from .helpers import clean_env, small

pytestmark = pytest.mark.usefixtures("sandboxed")

ROOT = Path(__file__).resolve().parent.parent


def wait_until(condition: object, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(condition())  # type: ignore[operator]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def ready(tmp_path: Path) -> tuple[int, int]:
    """Load once (which starts the zygote), then (zygote pid, ready spare pid)."""
    torch.load(small(tmp_path))
    sandbox_load._kept.clear()
    pid, _ = spare.settle()
    zygote = spare.zygote_pid()
    assert pid is not None and zygote is not None
    return zygote, pid


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_loads_match_torch_and_each_file_has_its_own_fork(tmp_path: Path) -> None:
    original = registry.original(registry.TORCH_LOAD)
    zygote, _ = ready(tmp_path)
    served = []
    for i in range(4):
        path = tmp_path / f"t{i}.pt"
        torch.save({"w": torch.randn(3, 5), "i": torch.arange(i + 1), "n": i}, path)
        worker, _ = spare.settle()
        assert worker is not None and psutil.Process(worker).ppid() == zygote
        got = torch.load(path)
        want = original(path, weights_only=True)
        assert got["n"] == want["n"] and torch.equal(got["w"], want["w"])
        assert torch.equal(got["i"], want["i"])
        assert wait_until(lambda w=worker: gone(w))  # it served this file, then exited
        served.append(worker)
    assert len(set(served)) == len(served)
    assert spare.zygote_pid() == zygote  # one zygote served them all


def test_a_worker_holds_nothing_of_the_zygote(tmp_path: Path) -> None:
    """Blocked waiting for its request, a worker holds stdin (/dev/null), its two pipes and
    its own request socket: not the zygote's control socket, nor anything else of it."""
    zygote, worker = ready(tmp_path)

    def fds() -> list[int]:
        return sorted(int(fd) for fd in os.listdir(f"/proc/{worker}/fd"))

    def blocked() -> bool:  # asleep in recvmsg (x86_64: 47; aarch64: 212), its request awaited
        call = Path(f"/proc/{worker}/syscall").read_text().split()[0]
        return call in ("47", "212") and fds() == [0, 1, 2, 3]

    assert wait_until(blocked), fds()  # a fork just made may not have closed its fds yet
    assert os.readlink(f"/proc/{worker}/fd/0") == "/dev/null"
    assert all(stat.S_ISFIFO(os.stat(f"/proc/{worker}/fd/{fd}").st_mode) for fd in (1, 2))
    zygote_sockets = socket_inodes(zygote)
    assert zygote_sockets  # its control socket, seen from here: the check is not vacuous
    assert socket_inodes(worker).isdisjoint(zygote_sockets)
    ctrl = next(a for a in psutil.Process(zygote).cmdline() if a.startswith("sock="))
    assert os.readlink(f"/proc/{zygote}/fd/{ctrl[5:]}") in zygote_sockets
    # Its own session: nothing it could signal as a group reaches the zygote.
    assert os.getsid(worker) == worker != os.getsid(zygote)


@pytest.mark.parametrize("probe", PROBES)
def test_seccomp_violation_through_the_zygote(tmp_path: Path, probe: str, no_leaks: None) -> None:
    zygote, worker = ready(tmp_path)
    path = small(tmp_path)
    with open(path, "rb") as f, pytest.raises(SandboxViolationError, match="seccomp"):
        sandbox_load.load(
            f.fileno(), path.stat().st_size, READ_ZIP, str(path), policy.resolve({}), None,
            probe=probe,
        )  # fmt: skip
    assert gone(worker) and spare.zygote_pid() == zygote


def test_timeout_kills_the_forked_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    slow = tmp_path / "slow.pt"
    slow.write_bytes(
        torch_zip(b"\x80\x02" + b"N0" * 30_000_000 + b"N.", compress=zipfile.ZIP_DEFLATED)
    )
    zygote, worker = ready(tmp_path)
    monkeypatch.setenv("SANDBOXLOAD_TIMEOUT", "0.5")
    with pytest.raises(SandboxTimeoutError):
        torch.load(slow)
    assert gone(worker)  # reaped by the zygote before the load returned
    assert spare.zygote_pid() == zygote


def test_a_dead_zygote_means_a_spawn_and_a_new_zygote(tmp_path: Path) -> None:
    zygote, worker = ready(tmp_path)
    os.kill(zygote, signal.SIGKILL)
    assert wait_until(lambda: gone(zygote))
    other = tmp_path / "other.pt"
    torch.save({"w": torch.arange(4.0)}, other)
    assert torch.equal(torch.load(other)["w"], torch.arange(4.0))  # spawned, transparently
    assert wait_until(lambda: gone(worker))  # the orphaned spare was discarded
    pid, _ = spare.settle()
    assert spare.zygote_pid() not in (None, zygote)
    assert pid is not None and psutil.Process(pid).ppid() == spare.zygote_pid()


def test_a_zygote_that_dies_mid_load_is_a_crash_not_a_hang(tmp_path: Path, no_leaks: None) -> None:
    """The worker finishes, but nobody is left to report its status: a typed error."""
    slow = tmp_path / "slow.pt"
    slow.write_bytes(
        torch_zip(b"\x80\x02" + b"N0" * 30_000_000 + b"N.", compress=zipfile.ZIP_DEFLATED)
    )
    zygote, worker = ready(tmp_path)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            torch.load(slow)
            outcome.append(None)
        except BaseException as exc:  # reported below
            outcome.append(exc)

    thread = threading.Thread(target=load)
    thread.start()

    def parsing() -> bool:  # the worker holds the checkpoint: it has its request
        try:
            return os.readlink(f"/proc/{worker}/fd/3") == str(slow)
        except OSError:
            return False

    try:
        assert wait_until(parsing)
        os.kill(zygote, signal.SIGKILL)
    finally:
        thread.join()
    [error] = outcome
    assert isinstance(error, SandboxCrashedError) and "zygote" in str(error), error
    assert gone(worker)


PARENT = """
import os, sys, torch, sandboxload
sandboxload.activate()
torch.save({"w": torch.ones(2)}, sys.argv[1])
torch.load(sys.argv[1])
from sandboxload.sandbox import spare
worker, _ = spare.settle()
print(spare.zygote_pid(), worker, flush=True)
sys.stdin.read()  # until killed
"""


def test_a_parent_that_dies_leaves_no_zygote_or_worker(tmp_path: Path) -> None:
    env = clean_env(PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "p.pt")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        zygote, worker = (int(x) for x in proc.stdout.readline().split())
        assert ZYGOTE_ARG in psutil.Process(zygote).cmdline()
        assert psutil.Process(worker).ppid() == zygote
    finally:
        proc.kill()
        proc.wait()
    assert wait_until(lambda: gone(zygote) and gone(worker))


def test_a_forked_child_uses_its_own_zygote(tmp_path: Path) -> None:
    path = small(tmp_path)
    zygote, mine = ready(tmp_path)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: loads fine, through a zygote of its own (or a spawn)
        code = 1
        try:
            os.close(read)
            ok = torch.equal(torch.load(path)["w"], torch.arange(6.0))
            spare.settle()
            os.write(write, f"{spare.zygote_pid()}".encode())
            code = 0 if ok else 2
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        theirs = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert theirs != str(zygote)
    assert spare.settle()[0] == mine and not gone(mine)  # the parent's spare was not used
    assert spare.zygote_pid() == zygote
    assert [p.pid for p in psutil.Process(zygote).children()] == [mine]


DROP = """
import os, shutil, sys, tempfile, time, torch, psutil, sandboxload
from sandboxload.sandbox import spare
sandboxload.activate()
folder = tempfile.mkdtemp()  # one the dropped user can read
os.chmod(folder, 0o755)
path = os.path.join(folder, "w.pt")
torch.save({"w": torch.ones(2)}, path)
os.chmod(path, 0o644)
torch.load(path)
spare.settle()
old = spare.zygote_pid()
os.setgroups([])
os.setgid(65534)
os.setuid(65534)  # the app drops privileges after its first load, as servers do
try:
    print("loaded", float(torch.load(path)["w"][0]))
except sandboxload.SandboxLoadError as exc:
    print("refused", type(exc).__name__)
spare.settle()
deadline = time.monotonic() + 60
while psutil.pid_exists(old) and psutil.Process(old).status() != psutil.STATUS_ZOMBIE:
    assert time.monotonic() < deadline, "the old zygote is still running"
    time.sleep(0.02)
uids = {p.uids().real for p in psutil.Process().children(recursive=True)}
print(sorted(uids))
"""  # its folder is removed by the test (the dropped user cannot)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_a_zygote_started_before_a_privilege_drop_is_not_used(tmp_path: Path) -> None:
    """An app that drops privileges after the zygote started must not have its loads parsed
    by root workers (found by a review of the zygote): the zygote started with other
    credentials is stopped, and whatever parses next has the app's new ones -- or, where
    the app's new user cannot start a worker at all, the load is refused, typed."""
    proc = subprocess.run(
        [sys.executable, "-c", DROP],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, children = proc.stdout.splitlines()
    assert first in ("loaded 1.0", "refused SandboxCrashedError"), first
    assert 0 not in json.loads(children), children  # no root process of ours is left


def test_a_stopped_zygote_costs_a_load_at_most_its_grace(tmp_path: Path, no_leaks: None) -> None:
    """A zygote stopped (SIGSTOP) reports no status: the load whose spare it forked ends
    soon after that worker exits (a typed error), and the next load spawns."""
    zygote, _ = ready(tmp_path)
    os.kill(zygote, signal.SIGSTOP)
    try:
        other = tmp_path / "other.pt"
        torch.save({"w": torch.arange(4.0)}, other)
        started = time.monotonic()
        with pytest.raises(SandboxCrashedError, match="zygote"):
            torch.load(other)
        assert time.monotonic() - started < policy.current().timeout
        assert torch.equal(torch.load(other)["w"], torch.arange(4.0))  # spawned
    finally:
        with contextlib.suppress(ProcessLookupError):  # replaced meanwhile: killed
            os.kill(zygote, signal.SIGCONT)
    assert wait_until(lambda: spare.zygote_pid() not in (None, zygote))
