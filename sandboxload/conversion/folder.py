"""Carry out a conversion: each checkpoint parsed in the sandbox, written, verified.

Into a new folder (``--out``, or ``NAME-safetensors`` beside the input), the whole result is
built under a private temporary name and renamed into place at the end: a failure, Ctrl-C or
SIGTERM leaves no output folder at all. In place, each file is renamed into place once
verified, indexes last, and the pickles are removed (``--delete-pickle``) only after every
file was written and verified.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..errors import ConversionError
from ..fileid import open_regular
from . import dcp, source, tensors, writer
from .layout import Plan, check_target


@dataclass
class Converted:
    source: str
    dest: str
    tensors: int
    dropped: list[str]
    nbytes: int
    names: list[str] = field(default_factory=list)  # the names written, for an index


def convert_one(
    path: str,
    dest: str,
    key: str | None,
    drop_non_tensors: bool,
    check: Callable[[str, int], None] | None = None,
) -> Converted:
    """Convert the checkpoint ``path`` to ``dest``, verified."""
    obj, size = source.load(path, check)
    return _write(obj, size, path, dest, key, drop_non_tensors)


def convert_dcp(folder: str, dest: str, key: str | None, drop_non_tensors: bool) -> Converted:
    """Convert the torch.distributed.checkpoint in ``folder`` to ``dest``, verified."""
    obj, size = dcp.load(folder)
    return _write(obj, size, folder, dest, key, drop_non_tensors)


def _write(
    obj: object, size: int, path: str, dest: str, key: str | None, drop_non_tensors: bool
) -> Converted:
    try:
        prep = tensors.select(obj, path, size, key, drop_non_tensors)
    except (MemoryError, RuntimeError) as exc:  # torch's allocator says RuntimeError
        raise ConversionError(
            path, f"there was not enough memory for its tensors ({exc})", "Free memory."
        ) from None
    del obj
    writer.write(prep, dest, path)
    data = sum(t.nbytes for t in prep.tensors.values())
    return Converted(path, dest, len(prep.tensors), prep.dropped, data, list(prep.tensors))


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
    for shard in p.shards[index]:
        weight_map.update(dict.fromkeys(done[shard].names, os.path.basename(p.convert[shard])))
    total = sum(done[shard].nbytes for shard in p.shards[index])
    return {"metadata": {"total_size": total, "format": "pt"}, "weight_map": weight_map}


def _write_json(obj: object, dest: str) -> None:
    with writer.temporary_beside(dest) as tmp:
        with open(tmp, "x", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        writer.publish(tmp, dest)


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
        writer.publish(tmp, out, directory=True)
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
    for rel in each([*sorted(p.convert), *sorted(p.dcp)]):
        if rel in p.dcp:  # a folder holding a torch.distributed.checkpoint
            done[rel] = convert_dcp(
                os.path.normpath(os.path.join(p.root, rel)),
                os.path.join(base, p.dcp_dest[rel]),
                key,
                drop_non_tensors,
            )
            continue
        done[rel] = convert_one(
            os.path.join(p.root, rel),
            os.path.join(base, p.convert[rel]),
            key,
            drop_non_tensors,
            lambda path, fd: check_target(p, path, fd),
        )
    for index, new in p.indexes.items():
        _write_json(_index(p, index, done), os.path.join(base, new))
    if delete_pickle:  # every pickle was converted and verified, or we would not be here
        for rel in [*p.convert, *p.indexes, *(f for files in p.dcp.values() for f in files)]:
            os.unlink(os.path.join(p.root, rel))
    return [done[rel] for rel in sorted(done)]
