"""A worker ready before it is needed, forked by this process's zygote.

Interpreter start-up and imports cost a fresh worker ~20 ms of CPU, so the first sandboxed
load starts a zygote (:mod:`.zygote`, a fork server that has imported everything once) in
the background, and from then on every worker is a fork of it: one is kept ready, waiting
on a socket for its request (the config and the two descriptors, sent with SCM_RIGHTS);
a load hands it over at once and forks the replacement while it parses. With no spare
ready (loads on several threads), a load forks one on demand. Only after its request does
a worker set its limits, install the filter and read the checkpoint, exactly as a spawned
worker does; it serves one file and exits.

A zygote or spare inherited through ``fork`` is never used (they belong to the parent).
If the parent dies, the zygote's control socket and the spare's socket close and both
exit. If the zygote is gone or a request to it fails, a load spawns a worker as without
one (:func:`popen`), and a new zygote starts in the background.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

from . import zygote
from .protocol import ZYGOTE_ARG
from .zygote import Worker

# The directory holding the sandboxload package, appended (after the standard library) to the
# isolated child's path, which then imports only the child package and the contract.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOOT = (
    f"import sys; sys.path.append({PACKAGE_ROOT!r}); "
    "from sandboxload.sandbox.child import worker; worker.main()"
)
ZYGOTE_BOOT = BOOT.replace("import worker; worker.main()", "import zygote; zygote.main()")


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


def _start_zygote(program: bytes) -> zygote.Zygote:
    """Started as a worker is (same interpreter flags, env, cwd, session); stdout and stderr
    go nowhere (it never prints; its workers get pipes of their own)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                "-B",
                "-c",
                ZYGOTE_BOOT,
                ZYGOTE_ARG,
                f"sock={theirs.fileno()}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
            env={},
            cwd="/",
            start_new_session=True,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return zygote.start(proc, ours, program)


_lock = threading.Lock()
_zygote: zygote.Zygote | None = None
_spare: Worker | None = None
_program: bytes | None = None
_filling = False  # a spare is being forked or the zygote started: loads on other threads wait not
_threads: list[threading.Thread] = []
_starting = threading.Lock()  # guards _threads: a thread is started and listed together


def _after_fork_in_child() -> None:
    """A forked child starts with no zygote, no spare and fresh locks (the parent's may have
    been held by another thread at fork time); its copies of their descriptors are closed,
    which leaves the parent's untouched."""
    global _filling, _lock, _spare, _starting, _zygote
    _filling = False
    _lock = threading.Lock()
    _starting = threading.Lock()
    if _spare is not None:
        _spare.forget()
    if _zygote is not None:
        _zygote.ctrl.close()
    _spare = _zygote = None
    _threads.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _owned_zygote() -> zygote.Zygote | None:
    z = _zygote
    return z if z is not None and z.owner == os.getpid() else None


def enable(program: bytes) -> None:
    """Keep one worker ready from now on (the program is the compiled seccomp filter)."""
    global _program
    with _lock:
        _program = program
    refill()


def refill() -> None:
    """Fork a replacement spare if none is ready; start the zygote first (in the background)
    if there is none, or it is gone."""
    global _filling, _zygote
    with _lock:
        if _filling or _program is None or _owned_spare() is not None:
            return
        _filling, program, current = True, _program, _owned_zygote()
        if current is not None and not current.serves_now():
            _zygote = None  # gone, stopped, or started with other privileges than ours now
    if current is not None and current.serves_now():
        worker = None
        try:
            worker = current.fork()  # a fork request: about a millisecond, while a load parses
        finally:
            _fill(worker)
        return
    if current is not None:
        current.stop()

    def start() -> None:
        global _zygote
        worker = None
        try:
            started = _start_zygote(program)
            with _lock:
                _zygote = started
            worker = started.fork()
        except OSError:
            pass  # out of descriptors or processes: loads spawn, the next one tries again
        finally:
            _fill(worker)

    try:
        _background(start)
    except BaseException:
        _fill(None)
        raise


def _owned_spare() -> Worker | None:
    return _spare if _spare is not None and _spare.owner == os.getpid() else None


def _fill(worker: Worker | None) -> None:
    global _filling, _spare
    with _lock:
        _filling = False
        if worker is not None and _spare is None:
            _spare, worker = worker, None
    if worker is not None:
        discard(worker)


def _background(fn: object) -> None:
    thread = threading.Thread(target=fn, name="sandboxload-spare", daemon=True)  # type: ignore[arg-type]
    _track(thread)


def _track(thread: threading.Thread) -> None:
    """Start ``thread`` and list it, as one step: ``settle`` never sees it unstarted."""
    with _starting:
        # Finished ones go: a long scan refills per file and must not keep them all.
        _threads[:] = [t for t in _threads if t.is_alive()]
        thread.start()
        _threads.append(thread)


def take() -> Worker | None:
    """The ready spare of this process, if any (never one inherited through fork)."""
    global _spare
    with _lock:
        spare, _spare = _owned_spare(), None
        current = _owned_zygote()
    if spare is None:
        return None
    if current is None or not current.serves_now() or spare.poll() is not None:
        discard(spare)  # dead, or its zygote is (its status would be lost), or stale
        return None
    return spare


def hand_over(config: list[str], fds: tuple[int, ...]) -> Worker | None:
    """Give the request to the ready spare, else to a worker forked now; None if neither
    could take it (the caller spawns one)."""
    for get in (take, _fork_now):
        worker = get()
        if worker is None:
            continue
        if worker.hand_over(config, fds):
            return worker
        discard(worker)
    return None


def _fork_now() -> Worker | None:
    with _lock:
        current = _owned_zygote()
    return current.fork() if current is not None else None


def discard(worker: Worker) -> None:
    worker.release()


def zygote_pid() -> int | None:
    """The pid of this process's zygote, if it has one."""
    with _lock:
        current = _owned_zygote()
    return current.pid if current is not None else None


def settle() -> tuple[int | None, set[int]]:
    """Wait for pending starts; then the ready spare's pid and the fds this process holds
    for it and for the zygote (tests count processes and descriptors: the zygote and a
    ready spare are not leaked; :func:`zygote_pid` names the other process)."""
    while True:
        with _starting:
            if not _threads:
                break
            thread = _threads.pop()
        thread.join()
    with _lock:
        current = _owned_zygote()
        held = {current.ctrl.fileno()} if current is not None else set()
        spare = _owned_spare()
        if spare is None:
            return None, held
        return spare.pid, held | spare.descriptors()


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
