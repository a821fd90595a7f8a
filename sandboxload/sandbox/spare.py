"""A worker started before it is needed, so interpreter start-up is off the load's path.

The spare has imported everything and waits on a socket for one request: the config and the
two descriptors (checkpoint, memfd), sent with SCM_RIGHTS. Only then does it set its limits,
install the filter and read the checkpoint, exactly as a freshly spawned worker would. It
serves one file and exits; a replacement is started in the background. A spare inherited
through ``fork`` is never used (it belongs to the parent). If the parent dies, the socket
closes and the spare exits.
"""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass

from .protocol import SPARE_ARG

# The directory holding the sandboxload package, appended (after the standard library) to the
# isolated child's path, which then imports only the child package and the contract.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOOT = (
    f"import sys; sys.path.append({PACKAGE_ROOT!r}); "
    "from sandboxload.sandbox.child import worker; worker.main()"
)


def popen(argv: list[str], pass_fds: tuple[int, ...]) -> subprocess.Popen[bytes]:
    """The worker command: isolated interpreter, empty env, its own session, only these fds."""
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", "-c", BOOT, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
        env={},
        cwd="/",
        start_new_session=True,
    )


@dataclass
class Spare:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    owner: int  # pid that started it

    def hand_over(self, config: list[str], fds: tuple[int, int]) -> bool:
        """Send the request; False if the spare is gone (the caller then spawns afresh)."""
        try:
            self.sock.sendmsg(
                ["\n".join(config).encode()],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
            )
            return True
        except OSError:
            return False
        finally:
            self.sock.close()


_lock = threading.Lock()
_spare: Spare | None = None
_program: bytes | None = None
_filling = False  # a replacement is being started: loads on other threads start none
_threads: list[threading.Thread] = []
_starting = threading.Lock()  # guards _threads: a thread is started and listed together


def _after_fork_in_child() -> None:
    """A forked child starts with no spare and a fresh lock (the parent's may have been held
    by another thread at fork time); its copies of the parent spare's descriptors are closed,
    which leaves the parent's spare untouched."""
    global _filling, _lock, _spare, _starting
    _filling = False
    _lock = threading.Lock()
    _starting = threading.Lock()
    if _spare is not None:
        _spare.sock.close()
        for pipe in (_spare.proc.stdout, _spare.proc.stderr):
            if pipe is not None:
                pipe.close()
    _spare = None
    _threads.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _start(program: bytes) -> Spare:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = popen([SPARE_ARG, f"sock={child.fileno()}"], (child.fileno(),))
    finally:
        child.close()
    assert proc.stdin is not None
    proc.stdin.write(program)  # the filter program waits in the pipe (far below its buffer)
    proc.stdin.close()
    return Spare(proc, parent, os.getpid())


def enable(program: bytes) -> None:
    """Keep one spare ready from now on (the program is the compiled seccomp filter)."""
    global _program
    with _lock:
        _program = program
    refill()


def refill() -> None:
    """Start a replacement spare in the background, if none is ready."""

    global _filling
    with _lock:
        # Loads on several threads (``scan --jobs``) each ask for a refill: one starts.
        if _filling or _program is None or (_spare is not None and _spare.owner == os.getpid()):
            return
        _filling, program = True, _program

    def fill() -> None:
        global _filling, _spare
        spare = None
        try:
            spare = _start(program)
        finally:
            with _lock:
                _filling = False
                if spare is not None and (_spare is None or _spare.owner != os.getpid()):
                    _spare, spare = spare, None
        if spare is not None:
            discard(spare)

    try:
        _background(fill)
    except BaseException:
        with _lock:
            _filling = False
        raise


def _background(fn: object) -> None:
    thread = threading.Thread(target=fn, name="sandboxload-spare", daemon=True)  # type: ignore[arg-type]
    _track(thread)


def _track(thread: threading.Thread) -> None:
    """Start ``thread`` and list it, as one step: ``settle`` never sees it unstarted."""
    with _starting:
        # Finished ones go: a long scan starts a refill per file and must not keep them all.
        _threads[:] = [t for t in _threads if t.is_alive()]
        thread.start()
        _threads.append(thread)


def take() -> Spare | None:
    """The ready spare of this process, if any (never one inherited through fork)."""
    global _spare
    with _lock:
        spare, _spare = _spare, None
    if spare is None or spare.owner != os.getpid():
        return None
    if spare.proc.poll() is not None:
        discard(spare)
        return None
    return spare


def discard(spare: Spare) -> None:
    spare.sock.close()
    spare.proc.kill()
    for pipe in (spare.proc.stdout, spare.proc.stderr):
        if pipe is not None:
            pipe.close()
    spare.proc.wait()


def settle() -> tuple[int | None, set[int]]:
    """Wait for pending starts; then the ready spare's pid and the fds this process holds
    for it (tests count processes and descriptors, and a ready spare is neither leaked)."""
    while True:
        with _starting:
            if not _threads:
                break
            thread = _threads.pop()
        thread.join()
    with _lock:
        if _spare is None or _spare.owner != os.getpid():
            return None, set()
        held = {_spare.sock.fileno()}
        held |= {p.fileno() for p in (_spare.proc.stdout, _spare.proc.stderr) if p is not None}
        return _spare.proc.pid, held


PRESTART_DELAY = 0.25


def prestart() -> None:
    """Start the first spare in the background, shortly after torch is patched: a server's
    first sandboxed load then skips interpreter start-up too, while a short script that only
    imports torch is gone before anything starts (measured: ``import torch`` went from
    1.016x to 1.025x with an immediate start). Quietly does nothing where the filter cannot
    be built; the load itself will report that."""

    def build() -> None:
        from .seccomp_filter import build_filter

        try:
            program = build_filter()
        except Exception:  # the first load raises SandboxUnavailableError with details
            return
        enable(program)

    timer = threading.Timer(PRESTART_DELAY, build)
    timer.daemon = True
    _track(timer)
