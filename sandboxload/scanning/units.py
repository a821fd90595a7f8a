"""What a scan looks at, as units of work: every file below the paths given, once each, and
each ``custom_generate/`` directory.

A file is a weight file by its name (``*.safetensors``, ``*.bin`` ...) or because a shard
index (``*.index.json``, parsed here) names it; a config, an index or code by its name; any
other file is sniffed by its content when checked (a torch checkpoint or pickle under any
name is checked as a weight file). A directory that cannot be listed and a linked directory
(not followed) are units of their own, reported as errors: a gate never skips silently.

A Hugging Face cache (``models--org--name/snapshots/<rev>/NAME`` linked to
``models--org--name/blobs/<digest>``) is scanned by blob: one unit per blob (and, for a
config, per name it is linked as: a config is judged by its name), however many snapshots link
it, reported under every snapshot path. A snapshot entry that links anywhere but into its own
repository's ``blobs/`` is a unit of its own, refused without being read.

Each unit has a key that does not depend on the machine or on the order of listing (its path
relative to the root it was found under; for a blob, ``models--org--name/blobs/<digest>``), so
``--shard K/N`` can split a scan into disjoint parts that together are the whole.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .. import modelfolder
from ..errors import SandboxLoadError
from ..fileid import open_regular
from ..modelfolder import BLOB_NAME, WEIGHT_SUFFIXES, cache_repo
from ..pinning import hf_blob_digest
from ..remotecode import CUSTOM_GENERATE_DIR, is_code, is_config

WEIGHTS, CONFIG, CODE, CUSTOM_GENERATE = "weights", "config", "code", "custom_generate"
INDEX = "index"  # a shard index: its weight_map names weight files
OTHER = "other"  # any other file: sniffed when checked
DIR_LINK = "dir_link"  # a linked directory: not followed (it may leave the root, or loop)
UNLISTED = "unlisted"  # a directory that could not be listed
INDEX_SUFFIX = ".index.json"
MAX_INDEX = modelfolder.MAX_INDEX
# Finding kinds of an index, for the check to turn into rows.
OUTSIDE, MISSING, BROKEN = "outside", "missing", "broken"


@dataclass
class Unit:
    kind: str  # one of the kinds above
    key: str  # what --shard splits by
    paths: list[str] = field(default_factory=list)  # as listed; the first is the one read
    size: int = 0
    problem: str | None = None  # a cache entry that links outside its blobs: refused as is
    root: str = ""  # the resolved folder it was found under: nothing read may leave it
    # An index's findings: (kind, the index path as listed, what is wrong).
    findings: list[tuple[str, str, str]] = field(default_factory=list)


def kind_of(name: str) -> str:
    if name.endswith(WEIGHT_SUFFIXES) or modelfolder.is_dcp_file(name):
        return WEIGHTS
    if name.endswith(INDEX_SUFFIX):
        return INDEX
    if is_config(name):
        return CONFIG
    return CODE if is_code(name) else OTHER


def collect(roots: list[str]) -> list[Unit]:
    """Every unit below ``roots`` (a file named directly is a weight file), sorted by path."""
    units: dict[tuple[str, ...], Unit] = {}
    listed: list[tuple[str, str, str, str]] = []  # (kind, path, key, resolved root)
    for root in roots:
        if os.path.isdir(root):
            _walk(root, units, listed)
        else:
            real = os.path.realpath(os.path.dirname(os.path.abspath(root)))
            listed.append((WEIGHTS, root, os.path.basename(root), real))
    named = _index_targets(units, listed)
    # A blob a snapshot links is checked under the snapshot's name (what a library reads).
    linked = {os.path.realpath(p) for _k, p, _key, _r in listed if _linked_snapshot_entry(p)}
    for kind, path, key, real in listed:
        if kind == OTHER and not os.path.islink(path) and os.path.realpath(path) in linked:
            continue
        if _norm(path) in named and kind != WEIGHTS:
            _add(units, WEIGHTS, path, key, real)  # what an index names is loaded as weights
            if kind == OTHER:
                continue
        if kind != INDEX:
            _add(units, kind, path, key, real)
    for unit in units.values():
        unit.paths.sort()
    return sorted(units.values(), key=lambda u: (u.paths[0], u.kind))


def _walk(
    root: str, units: dict[tuple[str, ...], Unit], listed: list[tuple[str, str, str, str]]
) -> None:
    real = os.path.realpath(root)

    def unlisted(exc: OSError) -> None:  # never skipped: an error row instead
        path = exc.filename or root
        what = f"cannot list this directory ({exc.strerror or exc}), so it was not checked"
        _add(units, UNLISTED, path, _posix(os.path.relpath(path, root)), real, problem=what)

    for folder, dirs, files in _tree(root, unlisted):
        rel_folder = os.path.relpath(folder, root)
        in_custom = CUSTOM_GENERATE_DIR in rel_folder.split(os.sep)
        if os.path.basename(folder) == CUSTOM_GENERATE_DIR:
            _add(units, CUSTOM_GENERATE, folder, _posix(rel_folder), real)
        for name in dirs:
            path = os.path.join(folder, name)
            if os.path.islink(path):  # os.walk skips it: say so, never pass it silently
                _add(units, DIR_LINK, path, _posix(os.path.relpath(path, root)), real)
        for name in sorted(files):
            kind = kind_of(name)
            if kind == CODE and in_custom:
                continue  # code in custom_generate/ is reported with the directory
            path = os.path.join(folder, name)
            listed.append((kind, path, _posix(os.path.relpath(path, root)), real))


def _tree(
    root: str, unlisted: Callable[[OSError], None]
) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(root)`` top-down, linked directories listed but not entered, without
    recursion: ``os.walk`` recurses (Python 3.11), so a tree a thousand directories deep
    raised RecursionError and stopped the scan of the whole mirror. A directory too deep to
    list (ENAMETOOLONG) is reported through ``unlisted`` like any other."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            unlisted(exc)
            continue
        dirs, files = [], []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(entry.name)
        dirs.sort()
        yield folder, dirs, files
        for name in reversed(dirs):
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                stack.append(path)


def read_index(path: str) -> dict[str, str]:
    """An index's ``weight_map`` (name -> file); ValueError if it is not one."""
    fd = open_regular(path)
    try:
        return modelfolder.weight_map(fd)
    finally:
        os.close(fd)


def _index_targets(
    units: dict[tuple[str, ...], Unit], listed: list[tuple[str, str, str, str]]
) -> set[str]:
    """Add a unit for each index, with what is wrong with what it names; the (normalized)
    paths of the listed files the indexes name."""
    files = {_norm(path) for _kind, path, _key, _real in listed}
    named: set[str] = set()
    for kind, path, key, real in listed:
        if kind != INDEX:
            continue
        unit = _add(units, INDEX, path, key, real)
        try:
            shards = sorted(set(read_index(path).values()))
        except (ValueError, OSError, SandboxLoadError) as exc:
            unit.findings.append((BROKEN, path, f"not a shard index that can be read ({exc})"))
            continue
        base = os.path.dirname(os.path.abspath(path))
        for shard in shards:
            target = os.path.normpath(os.path.join(base, shard))
            try:
                modelfolder.check_shards(path, [shard])
            except modelfolder.ModelFolderError as exc:
                unit.findings.append((OUTSIDE, path, exc.detail))
                continue
            if target in files:
                named.add(target)
            elif not os.path.lexists(target):
                unit.findings.append((MISSING, path, f"its weight_map names {shard!r}: missing"))
            else:
                what = f"its weight_map names {shard!r}, not a file the scan listed (a directory?)"
                unit.findings.append((MISSING, path, what))
    return named


def _add(
    units: dict[tuple[str, ...], Unit],
    kind: str,
    path: str,
    key: str,
    root: str,
    problem: str | None = None,
) -> Unit:
    identity: tuple[str, ...] = (kind, os.path.abspath(path))
    repo = cache_repo(path)
    if repo is not None and os.path.islink(path):
        blob, problem = _blob_link(path, repo)
        if blob is not None:
            # One unit per blob, named as linked and as resolved (a blob that is itself a
            # link is checked by its own name; pinning.hf_blob_digest). A config is judged
            # by its name, so a blob linked as two names is two units.
            name = os.path.basename(path) if kind in (CONFIG, INDEX) else ""
            identity = (kind, os.path.realpath(path), str(hf_blob_digest(path)), name)
            key = f"{os.path.basename(repo)}/blobs/{os.path.basename(blob)}"
            key += f" as {name}" if name else ""
    unit = units.get(identity)
    if unit is None:
        size = _size(path, kind)
        unit = units[identity] = Unit(kind, key, problem=problem, size=size, root=root)
    unit.paths.append(path)
    return unit


def _blob_link(path: str, repo: str) -> tuple[str | None, str | None]:
    """(the blob a snapshot link names, None) or (None, what is wrong with the link)."""
    try:
        target = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))
    except OSError as exc:
        return None, f"cannot read the link ({exc.strerror})"
    folder, name = os.path.split(target)
    if os.path.realpath(folder) != os.path.realpath(os.path.join(repo, "blobs")):
        return None, f"a cache snapshot entry that links outside {repo}/blobs/ (to {target})"
    if not BLOB_NAME.fullmatch(name):
        return None, f"a cache snapshot entry that links to blobs/{name}, not a digest name"
    if os.path.islink(target):
        return None, f"a cache snapshot entry whose blob {name} is itself a link"
    return target, None


def _linked_snapshot_entry(path: str) -> bool:
    repo = cache_repo(path)
    return repo is not None and os.path.islink(path) and _blob_link(path, repo)[0] is not None


def _size(path: str, kind: str) -> int:
    if kind in (CUSTOM_GENERATE, DIR_LINK, UNLISTED, CODE):
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # the check reports why


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _posix(rel: str) -> str:
    return rel.replace(os.sep, "/")


def shard_of(key: str, shards: int) -> int:
    """The shard of a unit: a hash of its key (as the bytes of the name on disk, which need
    not be UTF-8), so every machine splits alike."""
    return int.from_bytes(hashlib.sha256(os.fsencode(key)).digest()[:8], "big") % shards


def shard(units: list[Unit], index: int, shards: int) -> list[Unit]:
    return [u for u in units if shard_of(u.key, shards) == index]
