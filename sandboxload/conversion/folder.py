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
from . import dcp, dirs, source, tensors, writer
from .layout import Plan, check_target


@dataclass
class Converted:
    source: str
    dest: str
    tensors: int
    dropped: list[str]
    nbytes: int
    names: list[str] = field(default_factory=list)  # the names written, for an index


Claim = Callable[[list[str]], None]


def convert_one(
    path: str,
    dest: str,
    key: str | None,
    drop_non_tensors: bool,
    check: Callable[[str, int], None] | None = None,
    claim: Claim | None = None,
) -> Converted:
    """Convert the checkpoint ``path`` to ``dest``, verified; ``claim(names)`` may refuse
    the names it holds before anything is written."""
    obj, size = source.load(path, check)
    return _write(obj, size, path, dest, key, drop_non_tensors, claim)


def convert_dcp(folder: str, dest: str, key: str | None, drop_non_tensors: bool) -> Converted:
    """Convert the torch.distributed.checkpoint in ``folder`` to ``dest``, verified."""
    obj, size = dcp.load(folder)
    return _write(obj, size, folder, dest, key, drop_non_tensors)


def _write(
    obj: object,
    size: int,
    path: str,
    dest: str,
    key: str | None,
    drop_non_tensors: bool,
    claim: Claim | None = None,
) -> Converted:
    try:
        prep = tensors.select(obj, path, size, key, drop_non_tensors)
    except (MemoryError, RuntimeError) as exc:  # torch's allocator says RuntimeError
        raise ConversionError(
            path, f"there was not enough memory for its tensors ({exc})", "Free memory."
        ) from None
    del obj
    if claim is not None:
        claim(list(prep.tensors))
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


class _Claims:
    """Each name of a sharded checkpoint held by one shard: the loaders read every shard
    whole, in name order, and keep the last copy of a name -- renaming the shards could
    change which copy that is."""

    def __init__(self, p: Plan) -> None:
        self.p = p
        self.index_of = {shard: index for index, shards in p.shards.items() for shard in shards}
        self.held: dict[str, dict[str, str]] = {index: {} for index in p.shards}

    def of(self, rel: str) -> Claim | None:
        index = self.index_of.get(rel)
        if index is None:
            return None

        def claim(names: list[str]) -> None:
            held = self.held[index]
            for name in names:
                other = held.setdefault(name, rel)
                if other != rel:
                    raise ConversionError(
                        os.path.join(self.p.root, rel),
                        f"it holds {name!r}, which {other} holds too: the loaders keep "
                        "whichever copy they read last, and the new names would change "
                        "which one that is",
                        "Remove the copy that is not the model's from one of the shards.",
                    )

        return claim


def _index(p: Plan, index: str, done: dict[str, Converted]) -> dict[str, object]:
    weight_map: dict[str, str] = {}
    for shard in p.shards[index]:
        weight_map.update(dict.fromkeys(done[shard].names, os.path.basename(p.convert[shard])))
    total = sum(done[shard].nbytes for shard in p.shards[index])
    return {"metadata": {"total_size": total, "format": "pt"}, "weight_map": weight_map}


def _write_json(obj: object, dest: str) -> None:
    with writer.temporary_beside(dest) as tmp:
        with open(tmp.path, "x", encoding="utf-8") as f:
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
        pinned = dirs.Pinned(p.root)
        try:
            return _run(p, pinned.path, p.root, key, drop_non_tensors, each, pinned, delete_pickle)
        finally:
            pinned.close()
    with writer.temporary_beside(out, directory=True) as temporary:
        tmp = temporary.path
        for d in p.dirs:
            os.makedirs(os.path.join(tmp, d), exist_ok=True)
        for rel in p.copy:
            _copy(p, os.path.join(p.root, rel), os.path.join(tmp, rel))
        done = _run(p, lambda rel: os.path.join(tmp, rel), out, key, drop_non_tensors, each)
        writer.publish(temporary, out, directory=True)
    return done


def _run(
    p: Plan,
    place: Callable[[str], str],
    shown_base: str,
    key: str | None,
    drop_non_tensors: bool,
    each: Callable[[list[str]], Iterable[str]],
    pinned: dirs.Pinned | None = None,
    delete_pickle: bool = False,
) -> list[Converted]:
    """Convert everything, writing each result ``rel`` at ``place(rel)``; in place, remove
    the pickles at the end (``delete_pickle``), each only if it is the file converted."""
    done: dict[str, Converted] = {}
    claims = _Claims(p)

    def opened(path: str, fd: int) -> None:
        check_target(p, path, fd)
        p.ident[os.path.relpath(path, p.root)] = dirs.ident(os.fstat(fd))

    for rel in each([*sorted(p.convert), *sorted(p.dcp)]):
        target = p.dcp_dest[rel] if rel in p.dcp else p.convert[rel]
        if rel in p.dcp:  # a folder holding a torch.distributed.checkpoint
            c = convert_dcp(
                os.path.normpath(os.path.join(p.root, rel)), place(target), key, drop_non_tensors
            )
        else:
            c = convert_one(
                os.path.join(p.root, rel),
                place(target),
                key,
                drop_non_tensors,
                opened,
                claims.of(rel),
            )
        c.dest = os.path.join(shown_base, target)
        done[rel] = c
    for index, new in p.indexes.items():
        _write_json(_index(p, index, done), place(new))
    if delete_pickle and pinned is not None:  # everything was converted and verified
        kept = [
            rel
            for rel in [*p.convert, *p.indexes, *(f for files in p.dcp.values() for f in files)]
            if rel not in p.ident or not pinned.remove(rel, p.ident[rel])
        ]
        if kept:
            raise ConversionError(
                os.path.join(p.root, kept[0]),
                "it was not removed: it is no longer the file that was converted (the "
                f"conversion itself is done; {len(kept)} such)",
                "Something else writes in this folder: check it before removing anything.",
            )
    return [done[rel] for rel in sorted(done)]
