"""The parent side of a sandboxed parse: spawn, hand over descriptors, bound everything.

One fresh child per file, never forked from the app (torch and tokenizers run threads):
forked by the zygote, a single-threaded fork server started like a worker (see
:mod:`.spare`), or spawned when there is none. It gets an empty environment, ``/`` as
working directory, its own session (so the whole group can be killed), and exactly two
descriptors from the parent: its own read-only open of the checkpoint and a memfd that the
parent sized and sealed against growing. The parent reads a bounded amount of stdout (the
JSON description) and stderr, under a wall-clock deadline, and always reaps the child.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import (
    CorruptCheckpointError,
    SandboxCrashedError,
    SandboxLoadError,
    SandboxMemoryError,
    SandboxTimeoutError,
    SandboxUnavailableError,
    SandboxViolationError,
    UnsafeGlobalError,
    UnsupportedFormatError,
)
from . import memfds, spare
from . import protocol as p
from .zygote import Worker, WorkerLost

# A worker: spawned (Popen), or forked by the zygote (the part of Popen's interface used here).
Child = subprocess.Popen[bytes] | Worker

STDERR_CAP = 64 * 1024
MIB = 1 << 20
ANSWER_PER_BYTE = 24


@dataclass(frozen=True)
class Limits:
    timeout: float  # SANDBOXLOAD_TIMEOUT, for messages
    memory_bytes: int
    cpu_seconds: int
    seccomp: bool
    extra_globals: tuple[str, ...] = ()
    spare: bool = True
    # time.monotonic() by which the whole load must end (the child gets what is left);
    # None: timeout seconds from when the child starts.
    deadline: float | None = None


@dataclass
class Parsed:
    """A validated-to-be JSON description, and the memfd the child filled (caller closes)."""

    description: dict[str, Any]
    memfd: int
    memfd_capacity: int
    answer: bytes  # the JSON it came as


@lru_cache(maxsize=1)
def _filter_program() -> bytes:
    from .seccomp_filter import build_filter

    return build_filter()


def filter_program(name: str) -> bytes:
    try:
        return _filter_program()
    except Exception as exc:  # ImportError, OSError from libseccomp: fail closed
        raise SandboxUnavailableError(
            name, f"the seccomp filter cannot be built here ({type(exc).__name__}: {exc})"
        ) from exc


def memfd_capacity(size: int) -> int:
    # Legacy formats copy each storage once, 64-byte aligned: twice the file is ample.
    return 2 * size + MIB


def answer_cap(size: int) -> int:
    """The most JSON the parent reads for a file of ``size`` bytes. Each object of the
    description costs the pickle at least one opcode byte and the JSON at most ~20 bytes
    (an empty list: ``["list",[]]`` and a reference to it); strings at most 6x (escapes)."""
    return ANSWER_PER_BYTE * size + MIB


@contextlib.contextmanager
def setup_errors(name: str) -> Iterator[None]:
    """The system refusing a descriptor, a process or memory to a load is a typed error
    (``SandboxCrashedError``), not a bare ``OSError`` from deep inside."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, SandboxLoadError):
            raise
        raise SandboxCrashedError(
            name,
            f"the sandbox could not be set up ({exc.strerror or exc})",
            "The process may be out of descriptors, processes or memory; nothing was "
            "loaded, and a later load may succeed.",
        ) from exc


def run(
    fd: int, size: int, fmt: str, name: str, limits: Limits, probe: str | None = None
) -> Parsed:
    """Parse the checkpoint open on ``fd`` in a confined child; raise a typed error if it fails."""
    if probe is not None and probe not in p.PROBES:
        raise ValueError(f"unknown sandbox probe {probe!r}; one of {', '.join(p.PROBES)}")
    with setup_errors(name):
        return _run(fd, size, fmt, name, limits, probe)


def _run(fd: int, size: int, fmt: str, name: str, limits: Limits, probe: str | None) -> Parsed:
    program = filter_program(name) if limits.seccomp else b""
    capacity = memfd_capacity(size)
    memfd = memfds.output(capacity)
    try:
        # The child's own open file description: its reads cannot move anyone's offset.
        child_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            config = {
                "ckpt_fd": child_fd,
                "memfd": memfd,
                "format": fmt,
                "size": size,
                "memfd_capacity": capacity,
                "pickle_cap": max(64 * MIB, 4 * size),
                "memory_bytes": limits.memory_bytes,
                "cpu_seconds": limits.cpu_seconds,
                "extra_globals": ",".join(limits.extra_globals),
                "seccomp": int(limits.seccomp),
                "probe": probe or "",
            }
            assert set(config) == {*p.CONFIG_INTS, *p.CONFIG_STRS}  # the contract, whole
            out, err, status = _spawn(
                [f"{k}={v}" for k, v in config.items()],
                program,
                child_fd,
                memfd,
                limits,
                answer_cap(size),
                name,
            )
        finally:
            os.close(child_fd)
            if limits.seccomp and limits.spare:
                spare.enable(program)  # the next load finds a worker already started
        if limits.deadline is not None and time.monotonic() > limits.deadline:
            raise SandboxTimeoutError(name, limits.timeout)  # no time left to parse it
        description = _answer(out, err, status, name, fmt, limits)
        return Parsed(description, memfd, capacity, out)
    except BaseException:
        os.close(memfd)
        raise


def _spawn(
    argv: list[str],
    program: bytes,
    child_fd: int,
    memfd: int,
    limits: Limits,
    out_cap: int,
    name: str,
) -> tuple[bytes, bytes, int]:
    proc: Child | None = None
    if program and limits.spare:
        # A worker forked by the zygote, ready or on demand; the filter program is already
        # in its memory. The next one is forked once this load has its answer (_run), not
        # while it parses: measured, a fork then competes with the parse for the CPU.
        proc = spare.hand_over(argv, (child_fd, memfd))
    if proc is not None:
        program = b""
    else:
        proc = spare.popen(argv, (child_fd, memfd))
    try:
        deadline = limits.deadline or time.monotonic() + limits.timeout
        return _communicate(proc, program, deadline, limits.timeout, out_cap, name)
    finally:
        _end(proc)


def _end(proc: Child) -> None:
    """Kill the worker if it still runs, close its pipes, reap it: all of it, whatever fails."""
    try:
        _kill_group(proc)
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        if isinstance(proc, Worker):
            proc.release()
        else:
            proc.wait()


def _kill_group(proc: Child) -> None:
    if isinstance(proc, Worker):
        proc.kill()  # through its pidfd; it cannot fork, so it is its whole group
    elif proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _communicate(
    proc: Child,
    program: bytes,
    deadline: float,
    timeout: float,
    out_cap: int,
    name: str,
) -> tuple[bytes, bytes, int]:
    assert proc.stdout is not None and proc.stderr is not None
    try:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.write(program)
            proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died before reading; its status says why
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    caps = {proc.stdout.fileno(): out_cap, proc.stderr.fileno(): STDERR_CAP}
    sizes = dict.fromkeys(chunks, 0)
    with selectors.DefaultSelector() as sel:
        for pipe in (proc.stdout, proc.stderr):
            sel.register(pipe, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                _kill_group(proc)
                raise SandboxTimeoutError(name, timeout)
            for key, _ in sel.select(left):
                data = os.read(key.fd, 1 << 20)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                sizes[key.fd] += len(data)
                if sizes[key.fd] > caps[key.fd]:
                    if key.fd == proc.stderr.fileno():
                        continue  # keep draining, stop keeping
                    _kill_group(proc)
                    raise SandboxCrashedError(
                        name, f"the child's answer exceeded the size bound of {out_cap} bytes"
                    )
                chunks[key.fd].append(data)
    left = max(0.0, deadline - time.monotonic())
    try:
        status = proc.wait(left)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise SandboxTimeoutError(name, timeout) from None
    except WorkerLost:
        raise SandboxCrashedError(
            name, "the sandbox worker's exit status was lost (its zygote exited)"
        ) from None
    return (b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()]), status)


def _answer(
    out: bytes, err: bytes, status: int, name: str, fmt: str, limits: Limits
) -> dict[str, Any]:
    tail = err.decode("utf-8", "replace").strip()[-2000:]
    if status == -signal.SIGSYS:
        raise SandboxViolationError(
            name, "the child attempted a system call outside the seccomp allowlist and was killed"
        )
    if status == -signal.SIGXCPU:
        raise SandboxCrashedError(
            name,
            f"the child hit its CPU limit of {limits.cpu_seconds}s (SANDBOXLOAD_CPU_SECONDS)",
        )
    if status < 0:
        raise SandboxCrashedError(
            name,
            f"the child was killed by signal {-status} (from outside, or its CPU hard limit "
            f"of {limits.cpu_seconds + 1}s)",
        )
    if status != 0:
        if "MemoryError" in tail:
            raise SandboxMemoryError(name, limits.memory_bytes)
        raise SandboxCrashedError(name, f"the child exited with status {status}: {tail}")
    try:
        answer = json.loads(out)
    except (ValueError, RecursionError) as exc:
        raise SandboxCrashedError(name, f"the child's answer is not valid JSON ({exc})") from None
    if not isinstance(answer, dict):
        raise SandboxCrashedError(name, "the child's answer is not a JSON object")
    error = answer.get("error")
    if error is None:
        return answer
    raise _reported(error, name, fmt, limits)


def _reported(error: Any, name: str, fmt: str, limits: Limits) -> Exception:
    """The typed error for a failure the child reported (one of the contract's kinds)."""
    if not isinstance(error, dict):
        return SandboxCrashedError(name, "malformed error report from the child")
    kind, message = str(error.get("kind")), str(error.get("message"))[:2000]
    if kind == p.ERR_UNSAFE_GLOBAL:
        return UnsafeGlobalError(
            name, str(error.get("module"))[:200], str(error.get("name"))[:200], fmt
        )
    if kind == p.ERR_UNSUPPORTED:
        return UnsupportedFormatError(
            name, "torch checkpoint", f"It uses {message}, which sandboxload does not rebuild."
        )
    if kind == p.ERR_MEMORY:
        return SandboxMemoryError(name, limits.memory_bytes)
    if kind == p.ERR_SECCOMP:
        return SandboxUnavailableError(
            name, f"the seccomp filter could not be installed in the child ({message})"
        )
    return CorruptCheckpointError(name, message)
