"""Model folders: the files in them that redirect loading (attacker input too), and walking
them for weight files.

An index's ``weight_map``, a config's ``transformers_weights``: every file they name must stay
inside the model folder, and when safetensors were asked for, must be safetensors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import ModelFolderError

SAFE_SUFFIXES = (".safetensors", ".safetensors.index.json")


def _inside(base: str, path: str) -> bool:
    base = os.path.abspath(base)
    path = os.path.abspath(os.path.join(base, path))
    try:
        return os.path.commonpath([base, path]) == base
    except ValueError:
        return False


def check_shards(index_file: str, shards: Iterable[str]) -> None:
    """Shards resolved from ``index_file``: inside its folder; safetensors for a safetensors
    index."""
    base = os.path.dirname(os.path.abspath(index_file))
    want_safetensors = os.path.basename(index_file).endswith(".safetensors.index.json")
    for shard in shards:
        if not _inside(base, shard):
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
    if os.path.isabs(name) or not _inside(model_dir, name):
        raise ModelFolderError(
            where, f"transformers_weights names {name!r}, outside the model folder"
        )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".npy", ".npz")


def weight_files(paths: Iterable[str]) -> list[str]:
    """The files named, and every weight file (by suffix) below the directories named."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            for root, _dirs, files in os.walk(p):
                out += [os.path.join(root, f) for f in files if f.endswith(WEIGHT_SUFFIXES)]
        else:
            out.append(p)
    return sorted(set(out))
