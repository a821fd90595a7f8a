"""The parent side of the zygote: ask it for a worker, and the handle of a forked worker.

The zygote (:mod:`.child.zygote`) is a fork server started once per process: a request
sends it the four descriptors a new worker lives with (its request socket, the write ends
of its stdout and stderr pipes, the write end of a status pipe the zygote keeps) and gets
back the worker's pid and a pidfd. :class:`Worker` is the part of ``subprocess.Popen``'s
interface the client uses, plus :meth:`Worker.hand_over` (the request, as to a spare):
``kill`` goes through the pidfd (no pid-reuse race), ``wait`` reads the raw wait status the
zygote writes when it reaps the worker. A zygote that dies leaves its workers' status
unknown: :class:`WorkerLost`, which the client reports as a crash, never a hang.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

REQUEST_TIMEOUT = 2.0  # seconds a fork request may take before the zygote counts as broken
STATUS_GRACE = 0.5  # seconds a status may trail its worker's exit before the zygote counts as gone
_INT = 4
_STATUS_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")


def context() -> tuple[object, ...]:
    """What a worker inherits from whoever started its zygote and must still be this
    process's: users and groups, capabilities, seccomp and no-new-privs, the root directory
    and the cgroup. An app that drops privileges (or chroots, or confines itself) after the
    zygote started must not have its loads parsed with what it had before."""
    fields: list[str] = []
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            fields = [line.strip() for line in f if line.startswith(_STATUS_FIELDS)]
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            fields.append(f.read())
    except OSError:
        fields.append("unknown")
    root = os.stat("/")
    return (
        os.getresuid(),
        os.getresgid(),
        tuple(sorted(os.getgroups())),
        (root.st_dev, root.st_ino),
        tuple(fields),
    )


class WorkerLost(RuntimeError):
    """The zygote went away before reporting how the worker ended."""


def send_request(sock: socket.socket, config: list[str], fds: tuple[int, ...]) -> bool:
    """Send a worker its request (config lines + descriptors) and close the socket; False if
    the worker is gone (the caller then spawns afresh)."""
    try:
        sock.sendmsg(
            ["\n".join(config).encode()],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
        )
        return True
    except OSError:
        return False
    finally:
        sock.close()


class Worker:
    """A worker the zygote forked, not yet or no longer waiting for its request."""

    stdin: IO[bytes] | None = None

    def __init__(
        self,
        pid: int,
        pidfd: int,
        sock: socket.socket,
        stdout: int,
        stderr: int,
        status: int,
        zygote: Zygote | None = None,
    ) -> None:
        self.zygote = zygote  # told when its status does not come (stopped, or gone)
        self.pid = pid
        self.pidfd = pidfd
        self.sock = sock
        self.stdout: IO[bytes] = os.fdopen(stdout, "rb", buffering=0)
        self.stderr: IO[bytes] = os.fdopen(stderr, "rb", buffering=0)
        self.status_fd = status
        self.returncode: int | None = None
        self.owner = os.getpid()
        self.args = ["zygote-worker", f"pid={pid}"]

    def descriptors(self) -> set[int]:
        held = {self.pidfd, self.status_fd, self.stdout.fileno(), self.stderr.fileno()}
        return {fd for fd in held if fd >= 0} | ({self.sock.fileno()} - {-1})

    def hand_over(self, config: list[str], fds: tuple[int, ...]) -> bool:
        return send_request(self.sock, config, fds)

    def kill(self) -> None:
        """SIGKILL through the pidfd: a reaped worker's pid may be reused, its pidfd never."""
        if self.pidfd >= 0 and self.returncode is None:
            # PermissionError: a spare forked before this process dropped privileges (never
            # handed a request since: spare.take refuses it); its socket's EOF ends it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def poll(self) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired, WorkerLost):
            return self.wait(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit status, as ``Popen.returncode`` gives it (``-N``: killed by signal N).
        The zygote writes it when it reaps the worker; a worker gone for longer than
        :data:`STATUS_GRACE` without one means the zygote is stopped or gone."""
        if self.returncode is not None:
            return self.returncode
        if self.status_fd < 0:
            raise WorkerLost("the worker's status was lost")
        end = None if timeout is None else time.monotonic() + timeout
        gone_at: float | None = None
        while True:
            now = time.monotonic()
            left = None if end is None else max(0.0, end - now)
            if gone_at is not None:
                grace = gone_at + STATUS_GRACE - now
                left = grace if left is None else min(left, grace)
            watched = [self.status_fd] + ([self.pidfd] if gone_at is None else [])
            ready, _, _ = select.select(watched, [], [], left)
            if self.status_fd in ready:
                return self._status()
            if self.pidfd in ready:
                gone_at = time.monotonic()  # exited: its status is due now
                continue
            if gone_at is not None and time.monotonic() >= gone_at + STATUS_GRACE:
                if self.zygote is not None:
                    self.zygote.broken = True
                raise WorkerLost("the sandbox worker's zygote did not report its status")
            if end is not None and time.monotonic() >= end:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)

    def _status(self) -> int:
        data = os.read(self.status_fd, _INT)
        self._close_status()
        if len(data) != _INT:  # the zygote is gone: no status will come
            if self.zygote is not None:
                self.zygote.broken = True
            raise WorkerLost("the sandbox worker's zygote exited before reporting its status")
        status = int.from_bytes(data, sys.byteorder, signed=True)
        self.returncode = os.waitstatus_to_exitcode(status)
        self._close_pidfd()
        return self.returncode

    def _close_status(self) -> None:
        if self.status_fd >= 0:
            os.close(self.status_fd)
            self.status_fd = -1

    def release(self) -> None:
        """Kill it if it still runs, wait until it is gone, close everything held for it --
        on every path (a kill refused, a stopped zygote)."""
        try:
            self.kill()
            # Reaped by the zygote once it reports; a stopped zygote must not hang the load.
            with contextlib.suppress(WorkerLost, subprocess.TimeoutExpired):
                self.wait(REQUEST_TIMEOUT)
        finally:
            self.sock.close()
            for pipe in (self.stdout, self.stderr):
                pipe.close()
            self._close_status()
            self._close_pidfd()

    def _close_pidfd(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def forget(self) -> None:
        """In a forked child of the parent: close this process's copies, touch nothing."""
        self.sock.close()
        for pipe in (self.stdout, self.stderr):
            pipe.close()
        for fd in (self.status_fd, self.pidfd):
            if fd >= 0:
                os.close(fd)
        self.status_fd = self.pidfd = -1


class Zygote:
    """A running zygote of this process, and the control socket to it."""

    def __init__(self, proc: subprocess.Popen[bytes], ctrl: socket.socket) -> None:
        self.proc = proc
        self.ctrl = ctrl
        self.owner = os.getpid()
        self.context = context()  # what its workers inherit (they must match this process)
        self.broken = False
        self._lock = threading.Lock()  # one request and its reply at a time

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return not self.broken and self.proc.poll() is None

    def serves_now(self) -> bool:
        """Whether this process may use it now: its own, alive, and started with the
        privileges and confinement this process has now."""
        return self.owner == os.getpid() and self.alive() and self.context == context()

    def fork(self) -> Worker | None:
        """A new worker waiting for its request, or None (zygote gone, or out of resources:
        the caller spawns instead)."""
        if not self.serves_now():
            return None
        created: list[int] = []
        ours = theirs = None
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            out_r, out_w = os.pipe()
            created += [out_r, out_w]
            err_r, err_w = os.pipe()
            created += [err_r, err_w]
            status_r, status_w = os.pipe()
            created += [status_r, status_w]
            sent = (theirs.fileno(), out_w, err_w, status_w)
            pid, pidfd = self._request(sent)
        except OSError:
            pid, pidfd = 0, -1
        finally:
            if theirs is not None:
                theirs.close()
        for fd in created[1::2]:
            os.close(fd)  # the write ends: the worker and the zygote hold theirs
        if pid <= 0 or pidfd < 0 or ours is None:
            for fd in created[0::2]:
                os.close(fd)
            if ours is not None:
                ours.close()  # a worker forked without a pidfd to us sees EOF and exits
            if pidfd >= 0:
                os.close(pidfd)
            return None
        return Worker(pid, pidfd, ours, out_r, err_r, status_r, self)

    def _request(self, fds: tuple[int, ...]) -> tuple[int, int]:
        with self._lock:
            if self.broken:
                return 0, -1
            try:
                self.ctrl.sendmsg(
                    [b"fork"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                )
                msg, anc, _flags, _addr = self.ctrl.recvmsg(
                    _INT, socket.CMSG_SPACE(_INT), socket.MSG_CMSG_CLOEXEC
                )
            except OSError:  # timed out (stopped?), or gone: never ask this one again
                self.broken = True
                raise
        received = array.array("i")
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received.frombytes(data[: len(data) - len(data) % received.itemsize])
        if len(msg) != _INT:
            self.broken = True  # EOF: the zygote exited
            for fd in received:
                os.close(fd)
            return 0, -1
        pid = int.from_bytes(msg, sys.byteorder)
        if len(received) != 1:
            for fd in received:
                os.close(fd)
            return pid, -1
        return pid, received[0]

    def stop(self) -> None:
        """Close the control socket (the zygote exits on EOF) and reap it; one this process
        may no longer signal (it dropped privileges) or that is stopped is left to exit on
        that EOF (subprocess reaps it later)."""
        self.ctrl.close()
        with contextlib.suppress(PermissionError, ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(REQUEST_TIMEOUT)


def start(proc: subprocess.Popen[bytes], ctrl: socket.socket, program: bytes) -> Zygote:
    """Adopt a zygote just started with the other end of ``ctrl``: hand it the program."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(program)  # far below the pipe's buffer
        proc.stdin.close()
    except BaseException:  # it died at once: reap it, keep nothing
        ctrl.close()
        proc.kill()
        proc.wait()
        raise
    ctrl.settimeout(REQUEST_TIMEOUT)
    return Zygote(proc, ctrl)
