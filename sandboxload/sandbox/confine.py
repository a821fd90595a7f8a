"""Resource limits and the seccomp allowlist of the child.

The parent compiles the filter with libseccomp (through pyseccomp) once per process and hands
the BPF program to the child on stdin; the child, stdlib only, installs it with ``prctl``.
The child first moves its descriptors to fixed numbers, so one compiled filter fits every
child: 1 and 2 are the pipes back to the parent, 3 the checkpoint (read-only), 4 the memfd.
Anything outside the allowlist kills the whole child with SIGSYS.
"""

import ctypes
import fcntl
import os
import resource

CKPT_FD = 3
MEMFD_FD = 4

PROT_EXEC = 0x4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# Syscalls allowed with no argument check: memory management, signals, time, exit.
ALLOW_ANY = (
    "brk", "munmap", "mremap", "madvise", "futex", "exit", "exit_group", "rt_sigreturn",
    "rt_sigaction", "rt_sigprocmask", "sigaltstack", "getrandom", "clock_gettime", "gettid",
    "getpid", "close",
)  # fmt: skip
# Syscalls allowed only on one descriptor: (syscall, fd).
ALLOW_ON_FD = (
    [("read", CKPT_FD), ("pread64", CKPT_FD), ("lseek", CKPT_FD), ("fstat", CKPT_FD),
     ("pwrite64", MEMFD_FD), ("write", 1), ("write", 2), ("fstat", 1), ("fstat", 2)]
)  # fmt: skip
# fstat spelled newfstatat(fd, "", AT_EMPTY_PATH): only on these fds, only with that flag
# (a path relative to a regular file's fd fails with ENOTDIR anyway).
FSTATAT_FDS = (CKPT_FD, 1, 2)
AT_EMPTY_PATH = 0x1000
# Allowed only without PROT_EXEC (argument 2): no new executable memory, ever.
ALLOW_NO_EXEC = ("mmap", "mprotect")


def build_filter() -> bytes:
    """Compile the allowlist to a BPF program (parent side; needs pyseccomp + libseccomp)."""
    import tempfile

    import pyseccomp as sc

    flt = sc.SyscallFilter(defaction=sc.KILL_PROCESS)
    for name in ALLOW_ANY:
        flt.add_rule(sc.ALLOW, name)
    for name, fd in ALLOW_ON_FD:
        flt.add_rule(sc.ALLOW, name, sc.Arg(0, sc.EQ, fd))
    for fd in FSTATAT_FDS:
        flt.add_rule(
            sc.ALLOW,
            "newfstatat",
            sc.Arg(0, sc.EQ, fd),
            sc.Arg(3, sc.MASKED_EQ, AT_EMPTY_PATH, AT_EMPTY_PATH),
        )
    for name in ALLOW_NO_EXEC:
        flt.add_rule(sc.ALLOW, name, sc.Arg(2, sc.MASKED_EQ, PROT_EXEC, 0))
    with tempfile.TemporaryFile() as f:
        flt.export_bpf(f)
        f.seek(0)
        return f.read()


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
