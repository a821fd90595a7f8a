"""Confinement, child side: fixed descriptor numbers, rlimits, and installing the filter.

The parent compiles the seccomp filter (:mod:`sandboxload.sandbox.seccomp_filter`) and hands
the BPF program over on stdin; this module, stdlib only, installs it with ``prctl``. The
descriptors move first to the numbers the filter names (:data:`protocol.CKPT_FD`,
:data:`protocol.MEMFD_FD`), so one compiled filter fits every child.
"""

import ctypes
import fcntl
import os
import resource

from ..protocol import CKPT_FD, MEMFD_FD

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def set_limits(memory_bytes: int, cpu_seconds: int, fsize_bytes: int) -> None:
    """rlimits for the child: bounded memory and CPU, no core files, no processes, few fds."""
    limits = {
        resource.RLIMIT_AS: memory_bytes,
        resource.RLIMIT_CPU: cpu_seconds,
        # Writes (pwrite into the memfd included) may not reach past the memfd's size.
        resource.RLIMIT_FSIZE: fsize_bytes,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NOFILE: 8,
        resource.RLIMIT_NPROC: 0,
    }
    for which, value in limits.items():
        # The hard limit stays one above for CPU, so the child gets SIGXCPU (a clean signal
        # the parent reports) rather than SIGKILL.
        hard = value + 1 if which == resource.RLIMIT_CPU else value
        resource.setrlimit(which, (value, hard))


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


def install_filter(program: bytes) -> None:
    """Load the BPF program into this process; from here on, the allowlist is all there is."""
    if not program or len(program) % 8:
        raise OSError("empty or malformed seccomp program")
    count = len(program) // 8
    insns = (_SockFilter * count).from_buffer_copy(program)
    prog = _SockFprog(count, ctypes.cast(insns, ctypes.POINTER(_SockFilter)))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def arrange_fds(ckpt_fd: int, memfd: int) -> None:
    """Move the two inherited descriptors to the numbers the filter names."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (ckpt_fd, memfd)]
    for fd in (ckpt_fd, memfd):
        os.close(fd)
    os.dup2(high[0], CKPT_FD, inheritable=False)
    os.dup2(high[1], MEMFD_FD, inheritable=False)
    for fd in high:
        os.close(fd)
