"""The plan of a folder's conversion, checked before anything is written.

Every file is placed: a pickle checkpoint to convert (by its weight-like name and its sniffed
bytes), a shard index to rewrite, a file to carry over unchanged (which must hold no pickle,
:mod:`.content`), or one the operator left out (``--exclude``). Refused before any work:
- a file that links outside the folder (it would be copied or converted into the output and
  published with it), except a Hugging Face snapshot's links to its repository's blobs;
- a linked directory (the walk would not follow it: its files would silently be missing);
- an index naming anything but pickles of its own folder being converted;
- a name the output would take twice, or that exists already;
- a pickle beside safetensors weights: the loaders prefer the safetensors, so converting the
  pickle would change which weights the folder loads.

A ``torch.distributed.checkpoint`` (its ``.metadata`` and ``*.distcp`` files) converts as one
unit into ``model.safetensors`` in its folder.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import formats, modelfolder
from ..errors import ConversionError
from ..fileid import open_regular
from ..modelfolder import link_outside, opened_as
from ..wording import a
from . import content, source

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
NUMPY_SUFFIXES = (".npy", ".npz")
INDEX_SUFFIX = ".index.json"
DCP_METADATA = ".metadata"  # what torch's FileSystemReader reads
SAFE_WEIGHTS = (".safetensors", ".safetensors" + INDEX_SUFFIX)
WEIGHT_LIKE = (*SAFE_WEIGHTS, *PICKLE_SUFFIXES, INDEX_SUFFIX)


# Safetensors names the loaders read by themselves (transformers, sentence-transformers, peft,
# diffusers), and the one pickle name each may come from: any other pickle converted to one
# of them would make the folder load other weights than it does (a stray model.pt beside a
# sharded index became the model.safetensors transformers prefers).
_LOADER_READS = re.compile(
    r"(?P<stem>model|adapter_model|diffusion_pytorch_model)(?P<shard>-\d+-of-\d+)?\.safetensors"
)


def loader_source(target: str) -> str | None:
    """The pickle name the loaders read where they read ``target``, if they read it."""
    m = _LOADER_READS.fullmatch(target)
    if m is None:
        return None
    stem = "pytorch_model" if m["stem"] == "model" else m["stem"]
    return f"{stem}{m['shard'] or ''}.bin"


def target_name(name: str) -> str:
    """The safetensors name transformers looks for in place of a pickle's name."""
    stem = os.path.splitext(name)[0]
    if stem == "pytorch_model":
        return "model.safetensors"
    if stem.startswith("pytorch_model-"):  # a shard: pytorch_model-00001-of-00003.bin
        return "model" + stem[len("pytorch_model") :] + ".safetensors"
    return stem + ".safetensors"


@dataclass
class Plan:
    root: str
    convert: dict[str, str] = field(default_factory=dict)  # rel pickle -> rel safetensors
    copy: list[str] = field(default_factory=list)  # rel files that go over unchanged
    dirs: list[str] = field(default_factory=list)  # rel directories, empty ones included
    indexes: dict[str, str] = field(default_factory=dict)  # rel pickle index -> new index
    # rel folder of a torch.distributed.checkpoint -> its rel files, and its rel output
    dcp: dict[str, list[str]] = field(default_factory=dict)
    dcp_dest: dict[str, str] = field(default_factory=dict)
    # rel file -> (device, inode) of what was read: only that is ever removed (in place)
    ident: dict[str, tuple[int, int]] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)  # rel index -> its shards
    excluded: list[str] = field(default_factory=list)


def _excluded(rel: str, patterns: Iterable[str]) -> bool:
    return any(
        fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(os.path.basename(rel), p) for p in patterns
    )


def check_target(p: Plan, path: str, fd: int | None = None) -> None:
    """Refuse a file that is (or was opened as) a link to somewhere outside the folder; a
    snapshot's link may only reach a blob of its own repository (the rule ``scan`` applies
    too: :func:`sandboxload.modelfolder.link_outside`)."""
    real = opened_as(fd) if fd is not None else os.path.realpath(path)
    why = link_outside(p.root, path, real)
    if why is not None:
        raise ConversionError(
            path, why, "Copy the file into the folder if it belongs to the model, or --exclude it."
        )


def plan(root: str, exclude: Iterable[str] = (), in_place: bool = False) -> Plan:
    """Everything a conversion of the folder ``root`` will do, checked before it starts."""
    exclude = tuple(exclude)
    real = os.path.realpath(root)
    p = Plan(real)
    for here, dirs, files in os.walk(p.root):
        rel_here = os.path.relpath(here, p.root)
        kept = []
        for d in sorted(dirs):
            rel = os.path.normpath(os.path.join(rel_here, d))
            if _excluded(rel, exclude):
                p.excluded.append(rel)
                continue
            if os.path.islink(os.path.join(here, d)):
                raise ConversionError(
                    os.path.join(here, d),
                    "it is a linked directory",
                    "Convert the folder it links to, or --exclude it.",
                )
            p.dirs.append(rel)
            kept.append(d)
        dirs[:] = kept  # an excluded directory is not walked
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_here, name))
            if _excluded(rel, exclude):
                p.excluded.append(rel)
                continue
            _place(p, rel)
    for index in p.indexes:
        _check_index(p, index)
    _check_dcp(p)
    _check_preferred(p)
    _check_names(p, in_place)
    return p


def _place(p: Plan, rel: str) -> None:
    path = os.path.join(p.root, rel)
    check_target(p, path)
    name = os.path.basename(rel)
    if modelfolder.is_dcp_file(name):
        p.dcp.setdefault(os.path.dirname(rel), []).append(rel)
        st = os.lstat(path)
        p.ident[rel] = (st.st_dev, st.st_ino)
        return
    if name.endswith(tuple(s + INDEX_SUFFIX for s in PICKLE_SUFFIXES)):
        index = target_name(name[: -len(INDEX_SUFFIX)]) + INDEX_SUFFIX
        p.indexes[rel] = os.path.join(os.path.dirname(rel), index)
        return
    if name.endswith(PICKLE_SUFFIXES):
        fmt = source.sniff(path)
        if source.is_checkpoint(fmt):
            target = target_name(name)
            expected = loader_source(target)
            if expected is not None and name != expected:
                raise ConversionError(
                    path,
                    f"it would become {target}, which the loaders read by that name (in place "
                    f"of {expected}, and before any shard index): the folder would load it "
                    "instead of its own weights",
                    "--exclude it, or convert it alone into another folder (--out).",
                )
            p.convert[rel] = os.path.join(os.path.dirname(rel), target)
            return
        if fmt not in (formats.SAFETENSORS, formats.NUMPY):
            raise ConversionError(
                path,
                f"it is named like a checkpoint but is {a(fmt)} file, which cannot be converted",
                "Remove it, or leave it out with --exclude.",
            )
    why = content.pickle_inside(path)
    if why is not None:
        raise ConversionError(
            path,
            f"{why}, which a converted folder must not carry over",
            "Remove it, or leave it out with --exclude.",
        )
    p.copy.append(rel)


def _read_index(p: Plan, path: str) -> dict[str, str]:
    fd = open_regular(path)
    try:
        check_target(p, path, fd)  # the file opened, not the one the name reached at the walk
        st = os.fstat(fd)
        p.ident[os.path.relpath(path, p.root)] = (st.st_dev, st.st_ino)
        return modelfolder.weight_map(fd)
    except ValueError as exc:
        raise ConversionError(path, f"not a shard index ({exc})", "Check the file.") from None
    finally:
        os.close(fd)


def _check_index(p: Plan, index: str) -> None:
    path = os.path.join(p.root, index)
    here = os.path.dirname(index)
    shards = sorted(set(_read_index(p, path).values()))
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


def _check_dcp(p: Plan) -> None:
    """Each distributed checkpoint has the metadata that says what its data files hold."""
    for here, rels in p.dcp.items():
        if os.path.join(here, DCP_METADATA) not in {os.path.normpath(r) for r in rels}:
            raise ConversionError(
                os.path.join(p.root, rels[0]),
                f"it is part of a torch.distributed.checkpoint without its {DCP_METADATA} "
                "file, which says what the data files hold",
                "Copy the checkpoint whole, or --exclude its files.",
            )
        others = [
            r
            for r in (*p.convert, *p.indexes, *p.copy)
            if os.path.dirname(r) == here and (r in p.convert or r.endswith(WEIGHT_LIKE))
        ]
        if others:
            raise ConversionError(
                os.path.join(p.root, here, DCP_METADATA),
                "its folder holds other weights too "
                f"({', '.join(sorted(others)[:3])}): its model.safetensors would replace "
                "them in what the folder loads",
                "Convert the checkpoint from a folder of its own, or --exclude one of them.",
            )
        p.dcp_dest[here] = os.path.normpath(os.path.join(here, "model.safetensors"))


def _check_preferred(p: Plan) -> None:
    """A folder holding safetensors weights loads them, not its pickle: converting the pickle
    would publish other weights than the folder loads."""
    safe = {os.path.dirname(r): r for r in p.copy if r.endswith(SAFE_WEIGHTS)}
    for rel in p.convert:
        there = safe.get(os.path.dirname(rel))
        if there is not None:
            raise ConversionError(
                os.path.join(p.root, rel),
                f"its folder already holds safetensors weights ({there}), which the loaders "
                "prefer: converting the pickle would change which weights the folder loads",
                "Remove whichever weights are not the model's, or --exclude the pickle.",
            )


def _check_names(p: Plan, in_place: bool) -> None:
    taken = {*p.copy, *p.dirs, *(p.excluded if in_place else ())}
    new = Counter([*p.convert.values(), *p.indexes.values(), *p.dcp_dest.values()])
    for rel, times in new.items():
        if rel in taken or times > 1:
            raise ConversionError(
                os.path.join(p.root, rel),
                "the conversion would write a file of this name, which already exists or "
                "would be written twice",
                "Convert into a new folder with --out, or remove the file first.",
            )
