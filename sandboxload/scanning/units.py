"""What a scan looks at, as units of work: each weight file, config file, code file and
``custom_generate/`` directory below the paths given, once each.

A Hugging Face cache (``models--org--name/snapshots/<rev>/NAME`` linked to
``models--org--name/blobs/<digest>``) is scanned by blob: one unit per blob, however many
snapshots link it, reported under every snapshot path. A snapshot entry that links anywhere
but into its own repository's ``blobs/`` is a unit of its own, refused without being read.

Each unit has a key that does not depend on the machine or on the order of listing (its path
relative to the root it was found under; for a blob, ``models--org--name/blobs/<digest>``), so
``--shard K/N`` can split a scan into disjoint parts that together are the whole.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

from ..modelfolder import WEIGHT_SUFFIXES
from ..pinning import hf_blob_digest
from ..remotecode import CUSTOM_GENERATE_DIR, is_code, is_config

WEIGHTS, CONFIG, CODE, CUSTOM_GENERATE = "weights", "config", "code", "custom_generate"
DIR_LINK = "dir_link"  # a linked directory: not followed (it may leave the root, or loop)
_CACHE_REPO = re.compile(r"(models|datasets|spaces)--.+")
_DIGEST = re.compile(r"[0-9a-f]{64}|[0-9a-f]{40}")


@dataclass
class Unit:
    kind: str  # WEIGHTS, CONFIG, CODE, CUSTOM_GENERATE or DIR_LINK
    key: str  # what --shard splits by
    paths: list[str] = field(default_factory=list)  # as listed; the first is the one read
    size: int = 0
    problem: str | None = None  # a cache entry that links outside its blobs: refused as is


def kind_of(name: str) -> str | None:
    if name.endswith(WEIGHT_SUFFIXES):
        return WEIGHTS
    if is_config(name):
        return CONFIG
    return CODE if is_code(name) else None


def collect(roots: list[str]) -> list[Unit]:
    """Every unit below ``roots`` (a file named directly is a weight file), sorted by path."""
    units: dict[tuple[str, ...], Unit] = {}
    for root in roots:
        if not os.path.isdir(root):
            _add(units, WEIGHTS, root, os.path.basename(root))
            continue
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            rel_folder = os.path.relpath(folder, root)
            in_custom = CUSTOM_GENERATE_DIR in rel_folder.split(os.sep)
            if os.path.basename(folder) == CUSTOM_GENERATE_DIR:
                _add(units, CUSTOM_GENERATE, folder, _posix(rel_folder))
            for name in dirs:
                path = os.path.join(folder, name)
                if os.path.islink(path):  # os.walk skips it: say so, never pass it silently
                    _add(units, DIR_LINK, path, _posix(os.path.relpath(path, root)))
            for name in sorted(files):
                kind = kind_of(name)
                if kind is None or (kind == CODE and in_custom):
                    continue  # code in custom_generate/ is reported with the directory
                path = os.path.join(folder, name)
                _add(units, kind, path, _posix(os.path.relpath(path, root)))
    for unit in units.values():
        unit.paths.sort()
    return sorted(units.values(), key=lambda u: (u.paths[0], u.kind))


def _add(units: dict[tuple[str, ...], Unit], kind: str, path: str, key: str) -> None:
    identity: tuple[str, ...] = (kind, os.path.abspath(path))
    problem = None
    repo = _cache_repo(path)
    if repo is not None and os.path.islink(path):
        blob, problem = _blob_link(path, repo)
        if blob is not None:
            # One unit per blob, named as linked and as resolved (a blob that is itself a
            # link is checked by its own name; pinning.hf_blob_digest).
            identity = (kind, os.path.realpath(path), str(hf_blob_digest(path)))
            key = f"{os.path.basename(repo)}/blobs/{os.path.basename(blob)}"
    unit = units.get(identity)
    if unit is None:
        unit = units[identity] = Unit(kind, key, problem=problem, size=_size(path, kind))
    unit.paths.append(path)


def _cache_repo(path: str) -> str | None:
    """``.../models--org--name`` if ``path`` lies in one of its ``snapshots/``."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and _CACHE_REPO.fullmatch(parts[i - 1]):
            return os.sep.join(parts[:i])
    return None


def _blob_link(path: str, repo: str) -> tuple[str | None, str | None]:
    """(the blob a snapshot link names, None) or (None, what is wrong with the link)."""
    try:
        target = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))
    except OSError as exc:
        return None, f"cannot read the link ({exc.strerror})"
    folder, name = os.path.split(target)
    if os.path.realpath(folder) != os.path.realpath(os.path.join(repo, "blobs")):
        return None, f"a cache snapshot entry that links outside {repo}/blobs/ (to {target})"
    if not _DIGEST.fullmatch(name):
        return None, f"a cache snapshot entry that links to blobs/{name}, not a digest name"
    return target, None


def _size(path: str, kind: str) -> int:
    if kind not in (WEIGHTS, CONFIG):
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # the check reports why


def _posix(rel: str) -> str:
    return rel.replace(os.sep, "/")


def shard_of(key: str, shards: int) -> int:
    """The shard of a unit: a hash of its key, so every machine splits alike."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % shards


def shard(units: list[Unit], index: int, shards: int) -> list[Unit]:
    return [u for u in units if shard_of(u.key, shards) == index]
