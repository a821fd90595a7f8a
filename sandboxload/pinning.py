"""Hash pinning: every weight file must match a manifest of SHA-256 digests.

The manifest is ``sha256sum`` output (``<hex>  <path>``, ``*`` for binary mode allowed), paths
relative to the manifest. The digest is computed from the very descriptor that is then
loaded (no window to swap the file between check and use), and kept per file identity
(device, inode, size, mtime, ctime), so a server that reloads an unchanged file does not
hash it again. A file inside a Hugging Face cache (``.../blobs/<sha256>``) is checked against
its own blob name, manifest or not.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache

from .errors import HashMismatchError, PolicyError, UnpinnedFileError
from .fileid import LRU, identity, open_regular

_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_BLOB = re.compile(r"[0-9a-f]{64}")
CHUNK = 8 << 20

_digests: LRU[str] = LRU(256)


@dataclass(frozen=True)
class Manifest:
    path: str
    by_path: dict[str, str]  # absolute path (as listed, and resolved) -> digest

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(self.by_path.values())


@lru_cache(maxsize=4)
def _load(path: str, stamp: tuple[int, int, int]) -> Manifest:
    base = os.path.dirname(os.path.abspath(path))
    by_path: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise PolicyError(
            f"SANDBOXLOAD_MANIFEST={path!r}: cannot read the manifest ({exc.strerror})"
        ) from exc
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _LINE.fullmatch(line.rstrip("\n"))
        if m is None:
            raise PolicyError(
                f"manifest {path!r} line {number} is not '<sha256>  <path>' (sha256sum output)"
            )
        digest, name = m.group(1).lower(), m.group(2)
        full = os.path.normpath(os.path.join(base, name))
        by_path[full] = digest
        by_path.setdefault(os.path.realpath(full), digest)
    return Manifest(path, by_path)


def manifest(path: str) -> Manifest:
    st = os.stat(path)
    return _load(os.path.abspath(path), (st.st_ino, st.st_size, st.st_mtime_ns))


def digest_fd(fd: int) -> str:
    """SHA-256 of the whole file open on ``fd`` (pread: nobody's offset moves); cached."""
    key = identity(fd)
    cached = _digests.get(key) if key is not None else None
    if cached is not None:
        return cached
    h = hashlib.sha256()
    buf = bytearray(CHUNK)  # one buffer, refilled: hashing allocates nothing per chunk
    view = memoryview(buf)
    offset = 0
    while n := os.preadv(fd, [buf], offset):
        h.update(view[:n])
        offset += n
    digest = h.hexdigest()
    if key is not None:
        _digests.put(key, digest)
    return digest


def check(fd: int | None, name: str, data: bytes | None, manifest_path: str | None) -> str | None:
    """Verify one weight file; returns its digest when one was computed.

    ``fd`` for files (``name`` is their path), ``data`` for in-memory streams."""
    blob = _hf_blob_name(name) if fd is not None else None
    if manifest_path is None and blob is None:
        return None
    digest = digest_fd(fd) if fd is not None else hashlib.sha256(data or b"").hexdigest()
    if blob is not None and digest != blob:
        raise HashMismatchError(name, blob, digest, "its Hugging Face cache blob name")
    if manifest_path is None:
        return digest
    pins = manifest(manifest_path)
    if fd is None:
        if digest not in pins.digests:
            raise UnpinnedFileError(name, manifest_path)
        return digest
    listed = pins.by_path.get(os.path.abspath(name)) or pins.by_path.get(os.path.realpath(name))
    if listed is None:
        raise UnpinnedFileError(name, manifest_path)
    if listed != digest:
        raise HashMismatchError(name, listed, digest, f"the manifest {manifest_path}")
    return digest


def _hf_blob_name(name: str) -> str | None:
    """The expected digest of a file stored in a Hugging Face cache, from its blob name."""
    real = os.path.realpath(name)
    parent, base = os.path.split(real)
    if os.path.basename(parent) == "blobs" and _BLOB.fullmatch(base):
        return base
    return None


def write_manifest(paths: list[str], out: str) -> None:
    """``sha256sum``-style manifest of ``paths``, relative to ``out``'s folder."""
    base = os.path.dirname(os.path.abspath(out))
    lines = []
    for p in sorted(paths):
        fd = open_regular(p)
        try:
            lines.append(f"{digest_fd(fd)}  {os.path.relpath(os.path.abspath(p), base)}")
        finally:
            os.close(fd)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
