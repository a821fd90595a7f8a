"""Hash pinning: every weight file must match a manifest of SHA-256 digests.

The manifest is ``sha256sum`` output (``<hex>  <path>``, ``*`` for binary mode allowed), paths
relative to the manifest, each listed once, each name one line of UTF-8 text (pin refuses any
other name; a manifest listing a path twice is refused). The digest is computed from the very
descriptor that is then loaded (no window to swap the file between check and use), and kept per
file identity (device, inode, size, mtime, ctime), so a server that reloads an unchanged file
does not hash it again -- once the file has not changed for two seconds (a rewrite within the
same tick of the file system's clock keeps the identity; :func:`fileid.settled`). A file
inside a Hugging Face cache is checked against its own blob name, manifest or not:
``blobs/<64 hex>`` is the SHA-256 of an LFS file, ``blobs/<40 hex>`` the git blob id of a
file stored in git (SHA-1 of ``b"blob <size>\\0"`` and the content).

A pin is a statement about a path: bytes are checked against the entry of the file they were
read from (see :mod:`origins`), never against "any digest in the manifest".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from .errors import HashMismatchError, PolicyError, UnknownOriginError, UnpinnedFileError
from .fileid import LRU, identity, open_regular, settled
from .modelfolder import resolved_dir
from .wording import shown

_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_BLOB = re.compile(r"[0-9a-f]{64}|[0-9a-f]{40}")
CHUNK = 8 << 20
_MAX_HOPS = 40  # as the kernel's own limit on symbolic links followed

_digests: LRU[str] = LRU(256)
Progress = Callable[[int], object]  # called with the number of bytes just hashed


@dataclass(frozen=True)
class Manifest:
    path: str
    listed: dict[str, str]  # absolute path as listed -> digest (each path once)
    by_path: dict[str, str]  # the same, and each also with its folders resolved -> digest


@lru_cache(maxsize=4)
def _load(path: str, stamp: tuple[int, int, int]) -> Manifest:
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise PolicyError(
            f"SANDBOXLOAD_MANIFEST={path!r}: cannot read the manifest ({exc.strerror})"
        ) from exc
    listed: dict[str, str] = {}
    where: dict[str, int] = {}
    # Lines end at "\n" only, as sha256sum reads them ("\r\n" too); a name may hold any
    # other character str.splitlines would split at.
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError:
            raise PolicyError(f"manifest {path!r} line {number} is not UTF-8 text") from None
        if not line.strip() or line.startswith("#"):
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise PolicyError(
                f"manifest {path!r} line {number} is not '<sha256>  <path>' (sha256sum output)"
            )
        digest, name = m.group(1).lower(), m.group(2)
        full = os.path.normpath(os.path.join(base, name))
        if full in listed:
            raise PolicyError(
                f"manifest {path!r} lists {shown(full)!r} twice (lines {where[full]} and "
                f"{number}): which pin would hold is ambiguous, so none does. A manifest "
                "names each file once; write it again with `sandboxload pin`"
            )
        listed[full], where[full] = digest, number
    by_path = dict(listed)
    for full, digest in listed.items():
        by_path.setdefault(resolved_dir(full), digest)
    return Manifest(path, listed, by_path)


def manifest(path: str) -> Manifest:
    try:
        st = os.stat(path)
    except OSError as exc:  # a typed policy error, not a bare errno (CLI and loads alike)
        raise PolicyError(
            f"SANDBOXLOAD_MANIFEST={path!r}: cannot read the manifest ({exc.strerror}); "
            "write one with `sandboxload pin DIR --manifest PATH`"
        ) from exc
    return _load(os.path.abspath(path), (st.st_ino, st.st_size, st.st_mtime_ns))


def digest_fd(fd: int, progress: Progress | None = None) -> str:
    """SHA-256 of the whole file open on ``fd`` (pread: nobody's offset moves); cached.
    ``progress`` is told the bytes hashed, chunk by chunk (the CLI's bar on a terminal)."""
    key = identity(fd)
    cached = _digests.get(key) if key is not None else None
    if cached is not None:
        if progress is not None:
            progress(os.fstat(fd).st_size)
        return cached
    h = hashlib.sha256()
    buf = bytearray(CHUNK)  # one buffer, refilled: hashing allocates nothing per chunk
    view = memoryview(buf)
    offset = 0
    while n := os.preadv(fd, [buf], offset):
        h.update(view[:n])
        offset += n
        if progress is not None:
            progress(n)
    digest = h.hexdigest()
    if key is not None and settled(key):
        _digests.put(key, digest)
    return digest


def check(
    path: str | None,
    fd: int | None,
    data: bytes | None,
    manifest_path: str | None,
    label: str = "<bytes>",
) -> str | None:
    """Verify one weight file against the pin of ``path`` (the file it came from); returns
    its digest when one was computed.

    The digest is of what will be loaded: the descriptor ``fd``, or the in-memory ``data``
    read from ``path``. ``path`` is None for bytes nobody can trace to a file (``label``
    names them): under a manifest those are refused, since every pin names a path."""
    blob = hf_blob_digest(path) if path is not None else None
    if manifest_path is None and blob is None:
        return None
    digest = digest_fd(fd) if fd is not None else hashlib.sha256(data or b"").hexdigest()
    name = path or label
    if blob is not None:
        _check_blob(name, blob, digest, fd, data)
    if manifest_path is None:
        return digest
    if path is None:
        raise UnknownOriginError(name, manifest_path)
    listed = pinned_digest(manifest(manifest_path), path)
    if listed is None:
        raise UnpinnedFileError(path, manifest_path)
    if listed != digest:
        raise HashMismatchError(path, listed, digest, f"the manifest {manifest_path}")
    return digest


def pinned_digest(pins: Manifest, path: str) -> str | None:
    """The digest ``pins`` lists for ``path``: under the name as given, or the same name in
    its resolved directory -- never whatever a link with an unlisted name points to (that
    would serve another path's pinned bytes)."""
    return pins.by_path.get(os.path.abspath(path)) or pins.by_path.get(resolved_dir(path))


def check_blob(path: str, data: bytes) -> None:
    """``data``, read from ``path`` (a config, say), against its Hugging Face cache blob name."""
    blob = hf_blob_digest(path)
    if blob is not None:
        _check_blob(path, blob, hashlib.sha256(data).hexdigest(), None, data)


def _check_blob(
    name: str, blob: str, sha256: str | None, fd: int | None, data: bytes | None
) -> None:
    if len(blob) == 64:
        if sha256 != blob:
            raise HashMismatchError(name, blob, str(sha256), "its Hugging Face cache blob name")
        return
    actual = git_blob_id(fd, data)
    if actual != blob:
        raise HashMismatchError(
            name, blob, actual, "its Hugging Face cache blob name", "git blob id"
        )


def git_blob_id(fd: int | None, data: bytes | None = None) -> str:
    """git's id of a file stored in git: SHA-1 of ``b"blob <size>\\0"`` and the content, read
    from ``fd`` (pread, from the start) or ``data``."""
    if fd is None:
        content = data or b""
        return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    size = os.fstat(fd).st_size
    h = hashlib.sha1(b"blob %d\0" % size)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    offset = 0
    while n := os.preadv(fd, [buf], offset):
        h.update(view[:n])
        offset += n
    # A file that grew or shrank while read hashes under the wrong size: it cannot match.
    return h.hexdigest()


def hf_blob_digest(path: str) -> str | None:
    """The digest a Hugging Face cache promises for ``path``: the name of the first
    ``blobs/<sha256 or git blob id>`` entry on the way to the file, as the cache links it --
    whatever that entry itself points to (a blob that is a link elsewhere is still checked by
    its name)."""
    current = os.path.abspath(path)
    for _ in range(_MAX_HOPS):
        parent, base = os.path.split(current)
        parent = os.path.realpath(parent)  # folders resolved; the last name kept as linked
        if os.path.basename(parent) == "blobs" and _BLOB.fullmatch(base):
            return base
        try:
            target = os.readlink(os.path.join(parent, base))
        except OSError:
            return None  # not a link: the end of the chain
        current = os.path.normpath(os.path.join(parent, target))
    return None


# Where str.splitlines ends a line: a name holding one would start another manifest line.
LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def manifest_name(path: str, base: str) -> str:
    """The name a manifest in the folder ``base`` gives ``path``: one line of UTF-8 text, or
    a PolicyError saying why it cannot be (a line break in it would forge another pin)."""
    name = os.path.relpath(os.path.abspath(path), base)
    breaks = sorted({c for c in name if c in LINE_BREAKS})
    if breaks:
        which = ", ".join(shown(c) for c in breaks)
        raise PolicyError(
            f"refused {shown(path)}: its name holds a line break ({which}), which would start "
            "another line of the manifest (a forged pin); rename it. Nothing was written"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise PolicyError(
            f"refused {shown(path)}: its name is not valid UTF-8, which a manifest (UTF-8 "
            "text) cannot hold; rename it. Nothing was written"
        ) from None
    return name


def write_manifest(paths: list[str], out: str, progress: Progress | None = None) -> None:
    """``sha256sum``-style manifest of ``paths``, relative to ``out``'s folder (``progress``:
    as for :func:`digest_fd`, over all of them). Every name is checked before anything is
    hashed; ``out`` is replaced whole, or left as it was on any error."""
    base = os.path.dirname(os.path.abspath(out))
    names = {manifest_name(p, base): p for p in paths}  # one line per name
    lines = []
    for name, p in sorted(names.items()):
        fd = open_regular(p)
        try:
            lines.append(f"{digest_fd(fd, progress)}  {name}\n")
        finally:
            os.close(fd)
    _replace(out, "".join(lines).encode("utf-8"))


def _replace(out: str, data: bytes) -> None:
    """Write ``out`` atomically: a new file beside it, synced, renamed over it."""
    folder, base = os.path.split(os.path.abspath(out))
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
