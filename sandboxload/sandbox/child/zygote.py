"""The zygote: a fork server for sandbox workers, so no load pays for an interpreter start.

Started once per parent process the way a worker is (``python -I -S -B``, empty
environment, ``/`` as working directory, its own session, only its own descriptors), it
imports what a worker imports (:mod:`.worker`, at module level), reads the compiled seccomp
program from stdin once, and then waits on its control socket (``SOCK_SEQPACKET``). It is
single-threaded, stdlib-only, and never receives a checkpoint or a memfd: a request carries
only the four descriptors a new worker lives with, sent with ``SCM_RIGHTS`` --

- the socket end on which the worker will receive its own request (the checkpoint and the
  memfd, from the parent, exactly as a spawned spare did), and
- the write ends of the worker's stdout and stderr pipes, which the parent reads,
- the write end of a status pipe, which the zygote keeps.

It forks one worker per request and answers with the worker's pid and a pidfd (the parent
kills through it: no pid-reuse race). It reaps every worker (polling their pidfds alongside
the control socket) and writes the raw wait status to that worker's status pipe. When the
control socket closes (the parent is gone), it exits.

The forked worker, before anything else, puts its pipes on 1 and 2 and closes every other
descriptor but its request socket: above all the control socket (a compromised worker must
never reach the unconfined zygote) and the other workers' status pipes and pidfds. It then
leaves the zygote's session and runs :func:`worker.serve`: the same path a spawned worker
takes, rlimits and filter included. The zygote installs no signal handler, so a worker's
signal dispositions are those of an isolated interpreter, as a spawned worker's are.
"""

import os
import resource
import select
import sys

from . import worker

_socket = worker._socket
_REQUEST_FDS = 4  # worker's request socket, its stdout, its stderr, its status pipe
_INT = 4  # pids and wait statuses travel as 4-byte native ints


def _fds(anc: list) -> list:
    fds: list = []
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _INT
            fds += [
                int.from_bytes(data[i : i + _INT], sys.byteorder) for i in range(0, usable, _INT)
            ]
    return fds


def _become_worker(sock_fd: int, out_fd: int, err_fd: int, program: bytes) -> None:
    """In the forked child: never returns into the zygote's loop."""
    code = 1
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        # Everything else goes: the control socket, other workers' status pipes and pidfds.
        os.closerange(3, sock_fd)
        os.closerange(sock_fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        os.setsid()  # its own session, as a spawned worker has
        worker.serve(sock_fd, program)
        code = 0
    except BaseException:
        sys.excepthook(*sys.exc_info())  # what an interpreter prints, then exit status 1
    finally:
        sys.stderr.flush()
        os._exit(code)


class _Server:
    def __init__(self, ctrl: int, program: bytes) -> None:
        self.ctrl = _socket.socket(fileno=ctrl)
        self.program = program
        self.poller = select.poll()
        self.poller.register(ctrl, select.POLLIN)
        self.live: dict = {}  # pidfd -> (pid, status write end)

    def serve(self) -> None:
        while True:
            for fd, _events in self.poller.poll():
                if fd == self.ctrl.fileno():
                    if not self.fork_one():
                        return
                else:
                    self.reap(fd)

    def fork_one(self) -> bool:
        """Serve one request; False when the parent has gone."""
        msg, anc, _flags, _addr = self.ctrl.recvmsg(
            64, _socket.CMSG_SPACE(_REQUEST_FDS * _INT), _socket.MSG_CMSG_CLOEXEC
        )
        fds = _fds(anc)
        if not msg and not fds:
            return False
        pid = pidfd = -1
        if len(fds) == _REQUEST_FDS:
            try:
                pid = os.fork()
            except OSError:  # out of processes or memory: the parent spawns instead
                pid = -1
            if pid == 0:
                _become_worker(fds[0], fds[1], fds[2], self.program)
        if pid > 0:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pid = -1
        for fd in fds[:3] if pid > 0 else fds:
            os.close(fd)
        reply = []
        if pid > 0:
            self.live[pidfd] = (pid, fds[3])
            self.poller.register(pidfd, select.POLLIN)
            reply = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, pidfd.to_bytes(_INT, sys.byteorder))]
        try:
            self.ctrl.sendmsg([max(pid, 0).to_bytes(_INT, sys.byteorder)], reply)
        except OSError:
            return False  # the parent has gone
        return True

    def reap(self, pidfd: int) -> None:
        pid, status_fd = self.live.pop(pidfd)
        self.poller.unregister(pidfd)
        _, status = os.waitpid(pid, 0)
        try:
            os.write(status_fd, status.to_bytes(_INT, sys.byteorder, signed=True))
        except OSError:  # the parent closed its end: nobody waits for this worker any more
            status = -1
        os.close(status_fd)
        os.close(pidfd)


def main() -> None:
    ctrl = int(next(a for a in sys.argv[1:] if a.startswith("sock=")).partition("=")[2])
    program = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the workers' stdin: nothing to read
    os.close(devnull)
    # Started while the parent was short of descriptors, the zygote still serves later loads.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _Server(ctrl, program).serve()
