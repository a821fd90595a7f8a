"""Model folders: the files in them that redirect loading (attacker input too), and walking
them for weight files.

An index's ``weight_map``, a config's ``transformers_weights``: every file they name must stay
inside the model folder, and when safetensors were asked for, must be safetensors.

And whatever else a folder can redirect with (a sentence-transformers ``modules.json`` path,
a ``subfolder`` in ``model_args``, a linked directory, an adapter's base model): while a
user-facing call that named a local folder runs (``SentenceTransformer(dir)``,
``from_pretrained(dir)``, ``pipeline(model=dir)``), every weight file loaded must lie inside
that folder -- directories resolved, the file's own name as linked (a Hugging Face snapshot
links each file into ``blobs/``).

Which links a folder may hold, the one rule ``convert`` and ``scan`` share
(:func:`link_outside`): a file read from a folder must be inside it, judged on what was
actually opened (the descriptor's ``/proc/self/fd`` target, not the name checked earlier).
The one exception is a Hugging Face cache: a file in ``models--org--name/snapshots/<rev>/``
(or ``datasets--``, ``spaces--``) may link into that same repository's ``blobs/``, to a blob
named by its digest (a git blob id or a SHA-256) that is itself a regular file, not a link.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .errors import ModelFolderError
from .fileid import open_regular
from .refusals import refuse

# The resolved local folder the outermost user-facing call in progress loads from.
_root: ContextVar[str | None] = ContextVar("sandboxload_model_folder", default=None)
# Where a user-facing call names its model (the first positional argument otherwise).
FOLDER_KWARGS = ("pretrained_model_name_or_path", "model_name_or_path", "model")

SAFE_SUFFIXES = (".safetensors", ".safetensors.index.json")


# --- links: what a folder may link to (convert and scan) ---

CACHE_REPO = re.compile(r"(models|datasets|spaces)--.+")
BLOB_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def cache_repo(path: str) -> str | None:
    """``.../models--org--name`` if ``path`` lies in one of its ``snapshots/``."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and CACHE_REPO.fullmatch(parts[i - 1]):
            return os.sep.join(parts[:i])
    return None


def opened_as(fd: int) -> str:
    """The file a descriptor is open on, every link resolved."""
    return os.readlink(f"/proc/self/fd/{fd}")


def link_outside(root: str, path: str, real: str) -> str | None:
    """Why the file ``path``, listed below the resolved folder ``root`` and opened as
    ``real``, may not be read as part of that folder; None if it may."""
    if os.path.commonpath([root, real]) == root:
        return None
    repo = cache_repo(path)
    if repo is not None:
        blobs = os.path.realpath(os.path.join(repo, "blobs"))
        if os.path.dirname(real) == blobs and BLOB_NAME.fullmatch(os.path.basename(real)):
            hop = _first_hop(path)
            if hop is None or not os.path.islink(hop):
                return None
            return f"it links to the blob {hop!r}, which is itself a link (to {real!r})"
    return f"it links to {real!r}, outside the model folder {root}"


def _first_hop(path: str) -> str | None:
    try:
        target = os.readlink(path)
    except OSError:
        return None  # not a link: the file itself
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), target))


def inside(base: str, path: str) -> bool:
    base = os.path.abspath(base)
    path = os.path.abspath(os.path.join(base, path))
    try:
        return os.path.commonpath([base, path]) == base
    except ValueError:
        return False


def resolved_dir(path: str) -> str:
    """``path`` with its directories resolved and its last name kept as it is linked."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def folder_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The local model folder a call names, if it names one."""
    candidates = [kwargs[k] for k in FOLDER_KWARGS if k in kwargs] + list(args[:2])
    for value in candidates:
        if isinstance(value, (str, os.PathLike)) and os.path.isdir(value):
            return os.path.realpath(value)
    return None


@contextmanager
def loading_from(folder: str | None) -> Iterator[None]:
    """Confine weight loads to ``folder`` while the call runs (an outer call's folder wins:
    a library's nested call to another folder is the redirect this stops)."""
    if folder is None or _root.get() is not None:
        yield
        return
    token = _root.set(folder)
    try:
        yield
    finally:
        _root.reset(token)


def check_inside(path: str | None) -> None:
    """Refuse a weight file outside the folder of the user-facing call in progress."""
    root = _root.get()
    if root is None or path is None:
        return
    where = resolved_dir(path)
    if os.path.commonpath([root, where]) != root:
        refuse(
            ModelFolderError(
                path,
                f"it lies outside the model folder {root} being loaded (after resolving "
                "directory links): a file or config in the folder redirected loading "
                "(modules.json path, subfolder, a linked directory, a base model path). "
                "Load that model yourself, by its own path",
            )
        )


def check_shards(index_file: str, shards: Iterable[str]) -> None:
    """Shards resolved from ``index_file``: inside its folder; safetensors for a safetensors
    index."""
    base = os.path.dirname(os.path.abspath(index_file))
    want_safetensors = os.path.basename(index_file).endswith(".safetensors.index.json")
    for shard in shards:
        if not inside(base, shard):
            raise ModelFolderError(
                index_file, f"weight_map names {shard!r}, outside the model folder"
            )
        if want_safetensors and not shard.endswith(".safetensors"):
            raise ModelFolderError(
                index_file, f"a safetensors index names {shard!r}, which is not a safetensors file"
            )


def check_explicit_weights(model_dir: str, name: str) -> None:
    """``transformers_weights`` from a model's config.json."""
    where = os.path.join(model_dir, "config.json")
    if not isinstance(name, str) or not name.endswith(SAFE_SUFFIXES):
        raise ModelFolderError(
            where,
            f"transformers_weights names {name!r}; only safetensors "
            "files and safetensors indexes are accepted",
        )
    if os.path.isabs(name) or not inside(model_dir, name):
        raise ModelFolderError(
            where, f"transformers_weights names {name!r}, outside the model folder"
        )


# Where a sentence-transformers module config hands keyword arguments to transformers'
# ``from_pretrained`` (3.x names, then 6.x names).
LOADER_KWARGS = (
    "model_args",
    "tokenizer_args",
    "config_args",
    "model_kwargs",
    "tokenizer_kwargs",
    "processor_kwargs",
    "config_kwargs",
)


def loader_kwargs_findings(doc: Any) -> list[tuple[str, str]]:
    """What the loader arguments in a config (``sentence_bert_config.json``'s ``model_args``
    ...) change about how safely the model loads, as (argument, one line): ``weights_only``
    not true (``torch.load`` runs any pickle), ``trust_remote_code``, ``gguf_file``/
    ``from_tf``/``from_flax`` (other checkpoint loaders), a ``subfolder`` leaving the folder."""
    if not isinstance(doc, dict):
        return []
    found = []
    for key in LOADER_KWARGS:
        args = doc.get(key)
        if not isinstance(args, dict):
            continue
        why = []
        if "weights_only" in args and args["weights_only"] is not True:
            why.append(("weights_only", f"{args['weights_only']!r}: torch.load runs any pickle"))
        if args.get("trust_remote_code"):
            why.append(("trust_remote_code", f"{args['trust_remote_code']!r}: runs its code"))
        for other in ("gguf_file", "from_tf", "from_flax"):
            if args.get(other) not in (None, False, ""):
                why.append((other, f"{args[other]!r}: another checkpoint loader"))
        sub = args.get("subfolder")
        if sub is not None and not (isinstance(sub, str) and inside(_ANY_FOLDER, sub)):
            why.append(("subfolder", f"{sub!r}: outside the model folder"))
        found += [(arg, f"{key} passes {arg}={what}") for arg, what in why]
    return found


_ANY_FOLDER = os.path.join(os.sep, "model")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".npy", ".npz")
# torch.distributed.checkpoint's metadata pickle: the global one and each rank's own.
_DCP_METADATA = re.compile(r"(__[0-9]+)?\.metadata")


DCP_DATA_SUFFIX = ".distcp"  # its data files: torch.save records at the offsets it names


def is_dcp_metadata(path: str) -> bool:
    return _DCP_METADATA.fullmatch(os.path.basename(path)) is not None


def is_dcp_file(path: str) -> bool:
    """A file of a torch.distributed.checkpoint: what pin and scan take as weights."""
    return path.endswith(DCP_DATA_SUFFIX) or is_dcp_metadata(path)


INDEX_SUFFIX = ".index.json"  # a shard index: its weight_map names the files a load opens


@dataclass(frozen=True)
class WeightFiles:
    """What a load below some paths can open, as ``pin`` and ``verify`` find it."""

    files: list[str]  # normalized paths, sorted
    linked_dirs: list[str]  # directory links below a directory named: not followed
    unread_indexes: list[tuple[str, str]]  # (index, why its weight_map cannot be read)


def weight_files(paths: Sequence[str]) -> WeightFiles:
    """The files named; every weight file (by suffix) below the directories named; every
    file an index among those names (inside its folder, whatever its suffix: a load opens
    it). Linked directories below are not followed but listed (a walk that passed them
    silently would miss what a load reaches through them)."""
    named = {os.path.normpath(p) for p in paths if not os.path.isdir(p)}
    found = set(named)
    links: list[str] = []
    for p in filter(os.path.isdir, paths):
        for root, dirs, files in os.walk(p):
            links += [os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d))]
            found.update(
                os.path.normpath(os.path.join(root, f))
                for f in files
                if f.endswith((*WEIGHT_SUFFIXES, INDEX_SUFFIX)) or is_dcp_file(f)
            )
    unread: list[tuple[str, str]] = []
    for index in sorted(f for f in found if f.endswith(INDEX_SUFFIX)):
        try:
            found.update(_index_targets(index))
        except (OSError, ValueError) as exc:
            unread.append((index, str(exc)))
    files = sorted(f for f in found if not f.endswith(INDEX_SUFFIX) or f in named)
    return WeightFiles(files, sorted(map(os.path.normpath, links)), unread)


def _index_targets(index: str) -> list[str]:
    """The files ``index`` names that exist, inside its folder (a load refuses the others)."""
    fd = open_regular(index)
    try:
        shards = set(weight_map(fd).values())
    finally:
        os.close(fd)
    base = os.path.dirname(index)
    targets = (os.path.normpath(os.path.join(base, s)) for s in shards if inside(base, s))
    return [t for t in targets if os.path.lexists(t) and not os.path.isdir(t)]


MAX_INDEX = 64 << 20  # a shard index larger than this is not read


def weight_map(fd: int) -> dict[str, str]:
    """The ``weight_map`` (name -> file) of the shard index open as ``fd``; ValueError saying
    why if it is not one (over :data:`MAX_INDEX` bytes, not JSON, nested too deeply...)."""
    data = os.pread(fd, MAX_INDEX + 1, 0)
    if len(data) > MAX_INDEX:
        raise ValueError(f"over {MAX_INDEX} bytes")
    try:
        found = json.loads(data)["weight_map"]
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (KeyError, TypeError):
        raise ValueError("no weight_map") from None
    if not isinstance(found, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in found.items()
    ):
        raise ValueError("its weight_map is not names -> file names")
    return found
