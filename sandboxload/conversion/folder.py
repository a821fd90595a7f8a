"""Convert a file or a model folder: names, shard indexes, where the output goes.

A folder is planned before anything is written: every weight-named file is sniffed, every
pickle index is read and checked (its shards must be pickles of its own folder that are being
converted), and every name the output will take must be free. Then each checkpoint is parsed
in the sandbox, reduced to what safetensors holds, written and verified.

Into a new folder (``--out``, or ``NAME-safetensors`` beside the input), the whole result is
built under a temporary name and renamed into place at the end: a failure or Ctrl-C leaves no
output folder at all. In place, each file is renamed into place once verified, indexes last,
and the pickles are removed (``--delete-pickle``) only after everything was verified.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .. import formats
from ..errors import ConversionError
from ..fileid import open_regular
from ..wording import a
from . import source, tensors, writer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_SUFFIX = ".index.json"
MAX_INDEX_BYTES = 64 * 1024 * 1024
# Formats a folder may keep as they are: they hold no pickle.
KEPT_FORMATS = (formats.SAFETENSORS, formats.NUMPY)


def target_name(name: str) -> str:
    """The safetensors name transformers looks for in place of a pickle's name."""
    stem = os.path.splitext(name)[0]
    if stem == "pytorch_model":
        return "model.safetensors"
    if stem.startswith("pytorch_model-"):  # a shard: pytorch_model-00001-of-00003.bin
        return "model" + stem[len("pytorch_model") :] + ".safetensors"
    return stem + ".safetensors"


@dataclass
class Converted:
    source: str
    dest: str
    tensors: int
    aliases: dict[str, str]
    dropped: list[str]
    nbytes: int
    names: list[str] = field(default_factory=list)  # the names written, for an index


@dataclass
class Plan:
    root: str
    # Where the folder's files may lie once links are followed: the folder itself, and a
    # Hugging Face cache's blobs/ when the folder is one of its snapshots. A link elsewhere
    # (~/.ssh/id_rsa, another private model) would be copied or converted into the output.
    within: tuple[str, ...] = ()
    convert: dict[str, str] = field(default_factory=dict)  # rel pickle -> rel safetensors
    copy: list[str] = field(default_factory=list)  # rel files that go over unchanged
    dirs: list[str] = field(default_factory=list)  # rel directories, empty ones included
    indexes: dict[str, str] = field(default_factory=dict)  # rel pickle index -> new index
    shards: dict[str, list[str]] = field(default_factory=dict)  # rel index -> its shards
    excluded: list[str] = field(default_factory=list)


def _excluded(rel: str, patterns: Iterable[str]) -> bool:
    return any(
        fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(os.path.basename(rel), p) for p in patterns
    )


def _read_index(path: str) -> dict[str, str]:
    fd = open_regular(path)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_INDEX_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_INDEX_BYTES:
        raise ConversionError(path, "the index is larger than 64 MiB", "Check the file.")
    try:
        weight_map = json.loads(raw)["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConversionError(path, f"not a shard index ({exc})", "Check the file.") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise ConversionError(path, "its weight_map is not names -> file names", "Check it.")
    return weight_map


def plan(root: str, exclude: Iterable[str] = (), in_place: bool = False) -> Plan:
    """Everything a conversion of the folder ``root`` will do, checked before it starts."""
    exclude = tuple(exclude)
    real = os.path.realpath(root)
    p = Plan(real, (real, *_cache_blobs(real)))
    for here, dirs, files in os.walk(p.root):
        rel_here = os.path.relpath(here, p.root)
        for d in sorted(dirs):
            rel = os.path.normpath(os.path.join(rel_here, d))
            if os.path.islink(os.path.join(here, d)):
                raise ConversionError(
                    os.path.join(here, d),
                    "it is a linked directory",
                    "Convert the folder it links to, or --exclude it.",
                )
            p.dirs.append(rel)
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_here, name))
            if _excluded(rel, exclude):
                p.excluded.append(rel)
                continue
            check_target(p, os.path.join(here, name))
            if name.endswith((*PICKLE_SUFFIXES, ".npy", ".npz")):
                _classify(p, rel)
            elif name.endswith(".bin" + INDEX_SUFFIX) or name.endswith(".pt" + INDEX_SUFFIX):
                p.indexes[rel] = os.path.join(
                    os.path.dirname(rel),
                    target_name(name[: -len(INDEX_SUFFIX)]) + INDEX_SUFFIX,
                )
            else:
                p.copy.append(rel)
    for index in p.indexes:
        _check_index(p, index)
    _check_names(p, in_place)
    return p


def _cache_blobs(root: str) -> list[str]:
    """``blobs/`` of the Hugging Face cache repo whose snapshot ``root`` is, if it is one."""
    snapshots = os.path.dirname(root)
    if os.path.basename(snapshots) != "snapshots":
        return []
    blobs = os.path.join(os.path.dirname(snapshots), "blobs")
    return [blobs] if os.path.isdir(blobs) else []


def inside(p: Plan, real: str) -> bool:
    return any(os.path.commonpath([base, real]) == base for base in p.within)


def check_target(p: Plan, path: str, fd: int | None = None) -> None:
    """Refuse a file that is (or was opened as) a link to somewhere outside the folder."""
    real = os.readlink(f"/proc/self/fd/{fd}") if fd is not None else os.path.realpath(path)
    if not inside(p, real):
        raise ConversionError(
            path,
            f"it links to {real}, outside the model folder",
            "Copy the file into the folder if it belongs to the model, or --exclude it.",
        )


def _classify(p: Plan, rel: str) -> None:
    path = os.path.join(p.root, rel)
    fmt = source.sniff(path)
    if source.is_checkpoint(fmt):
        p.convert[rel] = os.path.join(os.path.dirname(rel), target_name(os.path.basename(rel)))
    elif fmt in KEPT_FORMATS:
        p.copy.append(rel)
    else:
        raise ConversionError(
            path,
            f"it is named like a checkpoint but is {a(fmt)} file, which cannot be converted",
            "Remove it, or leave it out with --exclude.",
        )


def _check_index(p: Plan, index: str) -> None:
    path = os.path.join(p.root, index)
    here = os.path.dirname(index)
    shards = sorted(set(_read_index(path).values()))
    for shard in shards:
        rel = os.path.normpath(os.path.join(here, shard))
        if os.path.dirname(rel) != here or shard != os.path.basename(shard):
            raise ConversionError(path, f"it names {shard!r}, outside its folder", "Fix it.")
        if rel not in p.convert:
            raise ConversionError(
                path,
                f"it names {shard!r}, which is not a pickle checkpoint being converted",
                "Fix the index, or convert its shards one by one.",
            )
    p.shards[index] = [os.path.normpath(os.path.join(here, s)) for s in shards]


def _check_names(p: Plan, in_place: bool) -> None:
    taken = set(p.copy) | set(p.excluded) if in_place else set(p.copy)
    new = list(p.convert.values()) + list(p.indexes.values())
    for rel in new:
        if rel in taken or new.count(rel) > 1:
            raise ConversionError(
                os.path.join(p.root, rel),
                "the conversion would write a file of this name, which already exists or "
                "would be written twice",
                "Convert into a new folder with --out, or remove the file first.",
            )


def _copy(p: Plan, src: str, dest: str) -> None:
    fd = open_regular(src)
    try:
        check_target(p, src, fd)  # what was opened, not what the name pointed to earlier
        mode = os.fstat(fd).st_mode & 0o777
        with os.fdopen(fd, "rb", closefd=False) as fin, open(dest, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 22)
        os.chmod(dest, mode)
    finally:
        os.close(fd)


def _index(p: Plan, index: str, done: dict[str, Converted]) -> dict[str, object]:
    weight_map: dict[str, str] = {}
    total = 0
    for shard in p.shards[index]:
        c = done.get(shard)
        if c is None:  # every tensor left out with --drop-non-tensors
            continue
        weight_map.update(dict.fromkeys(c.names, os.path.basename(p.convert[shard])))
        total += c.nbytes
    return {"metadata": {"total_size": total, "format": "pt"}, "weight_map": weight_map}


def _write_json(obj: object, dest: str) -> None:
    with writer.temporary_beside(dest) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)


def convert_one(
    path: str,
    dest: str,
    key: str | None,
    drop_non_tensors: bool,
    check: Callable[[str, int], None] | None = None,
) -> Converted | None:
    """Convert the checkpoint ``path`` to ``dest``; None when nothing was left to write."""
    prep = tensors.select(source.load(path, check), path, key, drop_non_tensors)
    if not prep.tensors and not prep.aliases:
        return None
    writer.write(prep, dest, path)
    data = sum(t.nbytes for t in prep.tensors.values())
    return Converted(
        path, dest, len(prep.tensors), prep.aliases, prep.dropped, data, list(prep.tensors)
    )


def execute(
    p: Plan,
    out: str | None,
    key: str | None,
    drop_non_tensors: bool,
    delete_pickle: bool,
    each: Callable[[list[str]], Iterable[str]] = lambda items: items,
) -> list[Converted]:
    """Carry out ``p`` into the new folder ``out`` (None: in place)."""
    if out is None:
        return _run(p, p.root, key, drop_non_tensors, delete_pickle, each)
    with writer.temporary_beside(out, directory=True) as tmp:
        for d in p.dirs:
            os.makedirs(os.path.join(tmp, d), exist_ok=True)
        for rel in p.copy:
            _copy(p, os.path.join(p.root, rel), os.path.join(tmp, rel))
        done = _run(p, tmp, key, drop_non_tensors, False, each)
        os.rename(tmp, out)  # fails if out appeared meanwhile: nothing is overwritten
        writer.sync_directory(os.path.dirname(os.path.abspath(out)))
        for c in done:
            c.dest = os.path.join(out, os.path.relpath(c.dest, tmp))
    return done


def _run(
    p: Plan,
    base: str,
    key: str | None,
    drop_non_tensors: bool,
    delete_pickle: bool,
    each: Callable[[list[str]], Iterable[str]],
) -> list[Converted]:
    done: dict[str, Converted] = {}
    for rel in each(sorted(p.convert)):
        c = convert_one(
            os.path.join(p.root, rel),
            os.path.join(base, p.convert[rel]),
            key,
            drop_non_tensors,
            lambda path, fd: check_target(p, path, fd),
        )
        if c is not None:
            done[rel] = c
    for index, new in p.indexes.items():
        _write_json(_index(p, index, done), os.path.join(base, new))
    if delete_pickle:
        for rel in [*p.convert, *p.indexes]:
            os.unlink(os.path.join(p.root, rel))
    return [done[rel] for rel in sorted(done)]
