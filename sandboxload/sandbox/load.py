"""One sandboxed load, end to end: fd in, the object ``torch.load`` would return out.

Parse in the child (:mod:`client`), or reuse the description kept for an unchanged file;
then validate and build in this process (:mod:`rebuild`) from private mappings of the
checkpoint and of the memfd.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from ..fileid import LRU, FileId
from ..policy import Policy
from . import client
from .rebuild import rebuild

MIB = 1 << 20
# torch's messages when the system, not the file, is why a mapping failed.
_EXHAUSTED = ("Too many open files", "Cannot allocate memory")
# Descriptions kept per (file identity, reader, extra globals), as their compact JSON:
# only those whose storages all lie in the file itself (rebuilding needs no memfd), only for
# files (an identity that can recur), and bounded by bytes.
KEPT_BYTES = 16 * MIB
KEPT_ENTRY_BYTES = 4 * MIB  # one file's description, at most (honest: ~150 bytes a tensor)
# The most this process holds while rebuilding a description, per byte of the file, beyond
# the result itself (measured worst case, one-byte empty lists: ~250; docs/sandbox.md).
TRANSIENT_PER_BYTE = 400
_kept: LRU[bytes] = LRU(64, max_bytes=KEPT_BYTES, weigh=len)


def extra_globals(pol: Policy) -> tuple[str, ...]:
    """``SANDBOXLOAD_ALLOW_GLOBALS``, and the classes in torch's own extension of its
    allowlist (``torch.serialization.add_safe_globals`` / ``safe_globals``), under the same
    rule: a plain data class is rebuilt without running its code. Functions there are never
    admitted (a pickle naming one is refused, as any function is)."""
    names = set(pol.allow_globals)
    for entry in torch.serialization.get_safe_globals():
        obj, spelled = entry if isinstance(entry, tuple) else (entry, None)
        # torch's own entries (nested-tensor and mesh classes) are torch's parity to build,
        # not plain data: sandboxload recognises those formats itself.
        if isinstance(obj, type) and not obj.__module__.startswith("torch."):
            dotted = f"{obj.__module__}.{obj.__qualname__}"
            if spelled in (None, dotted):  # a class the pickle names by another name: no
                names.add(dotted)
    return tuple(sorted(names))


def limits(
    pol: Policy,
    size: int,
    deadline: float | None = None,
    extra: tuple[str, ...] | None = None,
) -> client.Limits:
    memory = pol.memory_mb * MIB if pol.memory_mb else 1024 * MIB + 2 * size
    return client.Limits(
        timeout=pol.timeout,
        memory_bytes=memory,
        cpu_seconds=pol.cpu_seconds,
        seccomp=pol.seccomp,
        extra_globals=extra_globals(pol) if extra is None else extra,
        spare=pol.spare,
        deadline=deadline,
    )


def _mapping(fd: int, nbytes: int, name: str) -> Callable[[], Any]:
    """A private (copy-on-write) mapping of ``fd``, made on first use and then shared."""
    cache: list[Any] = []

    def get() -> Any:
        if not cache:
            # /proc/self/fd reopens the very inode that was sniffed and parsed; torch maps it
            # and closes its own descriptor, so nothing stays open but the mapping.
            try:
                storage = torch.UntypedStorage.from_file(f"/proc/self/fd/{fd}", False, nbytes)
            except RuntimeError as exc:  # torch's wrapping of open() or mmap() failing
                if not any(word in str(exc) for word in _EXHAUSTED):
                    raise
                with client.setup_errors(name):
                    raise OSError(str(exc)) from exc
            cache.append(storage)
        return cache[0]

    return get


def load(
    fd: int,
    size: int,
    reader: str,
    name: str,
    pol: Policy,
    map_location: Any,
    probe: str | None = None,
    file_id: FileId | None = None,
) -> Any:
    """Parse in the sandbox, then validate and build in this process, from ``fd`` (the file
    itself, or a sealed snapshot of it whose source file had identity ``file_id``).

    The whole load -- the child's parse and this process's rebuild -- ends within the
    policy's timeout. A zip checkpoint whose storages are all ranges of the file itself (the
    usual case) is described once: loading the same, unchanged file again (transformers
    reads a checkpoint on the meta device, then for real) rebuilds from the kept
    description, without a child.
    """
    deadline = time.monotonic() + pol.timeout
    extra = extra_globals(pol)  # once: the child, the cache key and the rebuild agree
    key = None if file_id is None or probe else (file_id, reader, extra)
    kept = _kept.get(key) if key is not None else None
    if kept is not None:
        try:
            description = json.loads(kept)
        except (ValueError, RecursionError):  # never expected: parse the file afresh
            description = None
        if description is not None:
            return _build(description, fd, size, None, 0, name, pol, map_location, deadline, extra)
    parsed = client.run(fd, size, reader, name, limits(pol, size, deadline, extra), probe=probe)
    try:
        result = _build(
            parsed.description,
            fd,
            size,
            parsed.memfd,
            parsed.memfd_capacity,
            name,
            pol,
            map_location,
            deadline,
            extra,
        )
    finally:
        os.close(parsed.memfd)
    if (
        key is not None
        and parsed.answer_bytes <= KEPT_ENTRY_BYTES
        and _self_contained(parsed.description)
    ):
        # Only the fields the rebuild validated: nothing else of the child's answer is kept.
        validated = {k: parsed.description[k] for k in ("version", "storages", "nodes", "root")}
        _kept.put(key, json.dumps(validated, separators=(",", ":")).encode())
    return result


def _self_contained(description: dict[str, Any]) -> bool:
    """Whether a (validated) description can be rebuilt without its memfd: every storage and
    every NumPy array lies in the file itself."""
    storages, nodes = description.get("storages"), description.get("nodes")
    if not isinstance(storages, list) or not isinstance(nodes, list):
        return False
    return all(
        isinstance(s, list) and s[2:3] in (["file"], ["view"]) for s in storages
    ) and not any(isinstance(n, list) and n[:1] == ["ndarray"] for n in nodes)


def _build(
    description: Any,
    fd: int,
    size: int,
    memfd: int | None,
    memfd_size: int,
    name: str,
    pol: Policy,
    map_location: Any,
    deadline: float,
    extra: tuple[str, ...],
) -> Any:
    def no_memfd() -> Any:
        raise ValueError("the description refers to a memfd it does not have")

    return rebuild(
        description,
        name,
        map_location=map_location,
        file_storage=_mapping(fd, size, name),
        memfd_storage=_mapping(memfd, memfd_size, name) if memfd is not None else no_memfd,
        file_size=size,
        memfd_size=memfd_size,
        extra_globals=extra,
        deadline=(deadline, pol.timeout),
    )


def parse_only(fd: int, size: int, reader: str, name: str, pol: Policy) -> int:
    """Parse in the sandbox without building anything (``scan``); the number of storages.

    Raises the same typed errors a load would (an unsafe global, a malformed file)."""
    parsed = client.run(fd, size, reader, name, limits(pol, size))
    os.close(parsed.memfd)
    storages = parsed.description.get("storages")
    return len(storages) if isinstance(storages, list) else 0
