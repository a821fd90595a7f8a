"""One sandboxed load, end to end: fd in, the object ``torch.load`` would return out."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from ..policy import Policy
from . import client
from .rebuild import rebuild

MIB = 1 << 20


def limits(pol: Policy, size: int) -> client.Limits:
    memory = pol.memory_mb * MIB if pol.memory_mb else 1024 * MIB + 2 * size
    return client.Limits(
        timeout=pol.timeout,
        memory_bytes=memory,
        cpu_seconds=pol.cpu_seconds,
        seccomp=pol.seccomp,
        extra_globals=pol.allow_globals,
        spare=pol.spare,
    )


def _mapping(fd: int, nbytes: int) -> Callable[[], Any]:
    """A private (copy-on-write) mapping of ``fd``, made on first use and then shared."""
    cache: list[Any] = []

    def get() -> Any:
        if not cache:
            # /proc/self/fd reopens the very inode that was sniffed and parsed; torch maps it
            # and closes its own descriptor, so nothing stays open but the mapping.
            cache.append(torch.UntypedStorage.from_file(f"/proc/self/fd/{fd}", False, nbytes))
        return cache[0]

    return get


def load(
    fd: int,
    size: int,
    fmt: str,
    name: str,
    pol: Policy,
    map_location: Any,
    probe: str | None = None,
) -> Any:
    """Parse in the sandbox, then validate and build in this process."""
    parsed = client.run(fd, size, fmt, name, limits(pol, size), probe=probe)
    try:
        return rebuild(
            parsed.description,
            name,
            map_location=map_location,
            file_storage=_mapping(fd, size),
            memfd_storage=_mapping(parsed.memfd, parsed.memfd_capacity),
            file_size=size,
            memfd_used=parsed.memfd_capacity,
            extra_globals=pol.allow_globals,
        )
    finally:
        os.close(parsed.memfd)


def memfd_from_bytes(data: bytes, name: str = "sandboxload-in") -> int:
    """A sealed, read-only memfd holding ``data`` (for file objects without a real file)."""
    import fcntl

    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL,
        )
    except BaseException:
        os.close(fd)
        raise
    return fd
