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

from ..errors import CorruptCheckpointError
from ..fileid import LRU, FileId, settled
from ..policy import Policy, allowed_globals
from . import client
from .owned import OwnedCopy
from .protocol import READ_DCP, READ_ZIP
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
KEPT_FIELDS = ("version", "storages", "nodes", "root")


def extra_globals(pol: Policy) -> tuple[str, ...]:
    """``SANDBOXLOAD_ALLOW_GLOBALS``, and the classes in torch's own extension of its
    allowlist (``torch.serialization.add_safe_globals`` / ``safe_globals``), under the same
    rule: a plain data class is rebuilt without running its code. Functions there are never
    admitted (a pickle naming one is refused, as any function is)."""
    names = set(allowed_globals(pol))  # judged first: a PolicyError, not a bad parse
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
    unchanged: Callable[[], bool] | None = None,
) -> Any:
    """Parse in the sandbox, then validate and build in this process, from ``fd`` (the file
    itself, with identity ``file_id``, or a sealed memfd of in-memory bytes).

    With ``unchanged`` (the route without ``mmap=True``, for a regular file), tensors own
    their memory: the file is read into it while the child parses (:mod:`owned`), and
    ``unchanged()`` must still hold once both are done -- the file is the one admitted (and
    pinned), not written meanwhile -- or the load fails.

    The whole load -- the child's parse and this process's rebuild -- ends within the
    policy's timeout. A zip checkpoint whose storages are all ranges of the file itself (the
    usual case) is described once: loading the same, unchanged file again (transformers
    reads a checkpoint on the meta device, then for real) rebuilds from the kept
    description, without a child.
    """
    deadline = time.monotonic() + pol.timeout
    extra = extra_globals(pol)  # once: the child, the cache key and the rebuild agree
    key = None if file_id is None or probe else (file_id, reader, extra)
    copy = None
    if unchanged is not None and reader == READ_ZIP:
        with client.setup_errors(name):  # no memory for the copy: typed, naming the file
            copy = OwnedCopy(fd, size, name)
    file = _file_storage(fd, size, name, copy, unchanged is not None)
    lim = limits(pol, size, deadline, extra)
    description, parsed = _describe(fd, size, reader, name, lim, key, probe, copy)
    try:
        if unchanged is not None and not unchanged():  # the bytes read are not those admitted
            raise CorruptCheckpointError(name, "the file changed while it was being loaded")
        memfd = (parsed.memfd, parsed.memfd_capacity) if parsed is not None else None
        result = _build(
            description, file, size, memfd, name, pol, map_location, deadline, extra, reader
        )
    finally:
        if parsed is not None:
            os.close(parsed.memfd)
    if parsed is None:
        return result
    if (
        key is not None
        and settled(key[0])
        and len(parsed.answer) <= KEPT_ENTRY_BYTES
        and _self_contained(parsed.description)
    ):
        # Only the fields the rebuild validated: nothing else of the child's answer is kept
        # (an answer of exactly those fields is kept as it came, not encoded again).
        validated = {k: parsed.description[k] for k in KEPT_FIELDS}
        if len(validated) == len(parsed.description):
            _kept.put(key, parsed.answer)
        else:
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


def _describe(
    fd: int,
    size: int,
    reader: str,
    name: str,
    lim: client.Limits,
    key: Any,
    probe: str | None,
    copy: OwnedCopy | None,
) -> tuple[Any, client.Parsed | None]:
    """The kept description, or the child's; and the owned copy read in the meantime."""
    parsed = None
    try:
        description = _kept_description(key)
        if description is None:
            parsed = client.run(fd, size, reader, name, lim, probe=probe)
            description = parsed.description
        if copy is not None:
            assert lim.deadline is not None
            copy.finish(lim.deadline, lim.timeout)
    except BaseException:
        if copy is not None:
            copy.cancel()  # refused, or out of time: stop reading a file nobody will use
        if parsed is not None:
            os.close(parsed.memfd)
        raise
    return description, parsed


def _kept_description(key: Any) -> Any:
    kept = _kept.get(key) if key is not None else None
    if kept is None:
        return None
    try:
        return json.loads(kept)
    except (ValueError, RecursionError):  # never expected: parse the file afresh
        return None


def _absent(what: str) -> Callable[[], Any]:
    def get() -> Any:  # a hostile description naming ranges this load has none of
        raise ValueError(f"the description refers to {what} it does not have")

    return get


def _file_storage(
    fd: int, size: int, name: str, copy: OwnedCopy | None, owned: bool
) -> Callable[[], Any]:
    """What "file" storage ranges are slices of: the owned copy, or a private mapping of the
    file itself (``mmap=True``, and ``map_location="meta"``, which reads no bytes)."""
    if not owned:
        return _mapping(fd, size, name)
    if copy is None:  # only zip checkpoints have storages in the file itself
        return _absent("file ranges")
    return copy.storage  # read by then: the load finished the copy first


def _build(
    description: Any,
    file: Callable[[], Any],
    size: int,
    memfd: tuple[int, int] | None,
    name: str,
    pol: Policy,
    map_location: Any,
    deadline: float,
    extra: tuple[str, ...],
    reader: str,
) -> Any:
    return rebuild(
        description,
        name,
        map_location=map_location,
        file_storage=file,
        memfd_storage=_mapping(memfd[0], memfd[1], name) if memfd else _absent("a memfd"),
        file_size=size,
        memfd_size=memfd[1] if memfd else 0,
        extra_globals=extra,
        deadline=(deadline, pol.timeout),
        records=reader == READ_DCP,
    )


def parse_only(fd: int, size: int, reader: str, name: str, pol: Policy) -> int:
    """Parse in the sandbox without building anything (``scan``); the number of storages.

    Raises the same typed errors a load would (an unsafe global, a malformed file)."""
    parsed = client.run(fd, size, reader, name, limits(pol, size))
    os.close(parsed.memfd)
    storages = parsed.description.get("storages")
    return len(storages) if isinstance(storages, list) else 0
