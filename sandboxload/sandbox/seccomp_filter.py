"""The child's seccomp filter: the syscall allowlist, compiled by libseccomp in the parent.

Compiled once per process (pyseccomp over the system libseccomp) and handed to each child
on stdin as a BPF program; the child installs it (:mod:`child.confine`). Default action:
kill the whole child (SIGSYS). Descriptor-bound rules name the fixed numbers of the
contract, to which the child moves its descriptors first.
"""

from __future__ import annotations

from .protocol import CKPT_FD, MEMFD_FD

PROT_EXEC = 0x4

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
