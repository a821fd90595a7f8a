"""``sandboxload convert PATH``: pickle checkpoints -> safetensors, parsed only in the sandbox.

PATH is a checkpoint or a model folder. Each checkpoint is parsed by the confined child
(never unpickled here), reduced to its name -> tensor map (tied weights recorded as
safetensors' own conversion records them), written under a temporary name, read back and
compared bit for bit, and only then renamed into place. A folder's shard index becomes a
``model.safetensors.index.json``; sentence-transformers module folders (``2_Dense/``) convert
like the rest.

Where the output goes: a file converts beside itself (``pytorch_model.bin`` ->
``model.safetensors``; ``x.pt`` -> ``x.safetensors``), or into ``--out DIR``; a folder converts
into a new folder (``--out DIR``, default ``PATH-safetensors`` beside it) that holds everything
else of the folder unchanged and no pickle, or ``--in-place`` beside its pickles
(``--delete-pickle`` then removes them, once everything was verified).

Exit status: 0 converted; 1 a checkpoint was refused (a global that is not data, what
safetensors cannot store, a pin that does not match); 2 bad usage or an unreadable path;
130 interrupted (nothing half-written is left).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import SandboxLoadError
from ..wording import count
from . import progress


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="sandboxload convert",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Everything of the policy applies (manifest, limits, allowed globals, seccomp) "
        "but 'pickle': converting always parses in the sandbox.",
    )
    ap.add_argument("path", help="a checkpoint, or a model folder")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", help="write the result into DIR (a new folder)")
    where.add_argument(
        "--in-place", action="store_true", help="write the safetensors beside the pickles"
    )
    ap.add_argument(
        "--delete-pickle",
        action="store_true",
        help="with --in-place: remove each pickle (and its index) once everything is verified",
    )
    ap.add_argument(
        "--drop-non-tensors",
        action="store_true",
        help="leave out what safetensors cannot store (optimizer state, numbers, strings) "
        "instead of refusing the checkpoint; each is named",
    )
    ap.add_argument("--key", help="convert the mapping under this top-level entry")
    ap.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave files matching GLOB (relative path or name) out of a folder's conversion",
    )
    opts = ap.parse_args(argv)
    if opts.delete_pickle and not opts.in_place:
        ap.error("--delete-pickle needs --in-place (a new folder never holds the pickles)")
    return opts


def _say(message: str) -> None:
    sys.stderr.write(f"sandboxload convert: {message}\n")


def _report(c: object) -> None:
    from ..conversion.folder import Converted

    assert isinstance(c, Converted)
    extra = "".join(f"; {a} recorded as {k}" for a, k in sorted(c.aliases.items()))
    if c.dropped:
        extra += f"; left out: {', '.join(c.dropped)}"
    print(f"converted {c.source} -> {c.dest} ({c.tensors} tensors, {c.nbytes / 1e6:.1f} MB{extra})")


def _file(opts: argparse.Namespace) -> int:
    from ..conversion import folder

    path = opts.path
    name = folder.target_name(os.path.basename(path))
    dest = os.path.join(opts.out or os.path.dirname(os.path.abspath(path)), name)
    if os.path.lexists(dest):
        _say(f"{dest} already exists; remove it or choose another --out")
        return 2
    if opts.out:
        os.makedirs(opts.out, exist_ok=True)
    c = folder.convert_one(path, dest, opts.key, opts.drop_non_tensors)
    if c is None:
        _say(f"{path}: nothing is left to write once its non-tensor entries are left out")
        return 1
    _report(c)
    if opts.delete_pickle:
        os.unlink(path)
        print(f"removed {path}")
    return 0


def _folder(opts: argparse.Namespace) -> int:
    from ..conversion import folder

    root = os.path.realpath(opts.path)
    out = None if opts.in_place else os.path.abspath(opts.out or root.rstrip("/") + "-safetensors")
    if out is not None:
        if os.path.commonpath([root, os.path.realpath(out)]) == root:
            _say(f"--out {out} is inside the folder being converted; choose a folder outside it")
            return 2
        if os.path.lexists(out) and not (os.path.isdir(out) and not os.listdir(out)):
            _say(f"{out} already exists; remove it or choose another --out")
            return 2
    p = folder.plan(root, opts.exclude, in_place=out is None)
    if not p.convert:
        _say(f"no pickle checkpoint found under {root}; nothing to convert")
        return 2
    done = folder.execute(
        p,
        out,
        opts.key,
        opts.drop_non_tensors,
        opts.delete_pickle,
        lambda items: progress.each(items, "converting", unit="file"),
    )
    for c in done:
        _report(c)
    for rel in p.excluded:
        print(f"left out {os.path.join(root, rel)} (--exclude)")
    left = len(p.convert) - len(done)
    tail = f"; {left} left out with nothing to write" if left else ""
    print(f"converted {count(len(done), 'checkpoint')} into {out or root}{tail}")
    return 0


def main(argv: list[str]) -> int:
    opts = _args(argv)
    try:
        return _folder(opts) if os.path.isdir(opts.path) else _file(opts)
    except SandboxLoadError as exc:
        _say(str(exc))
        return 1
    except OSError as exc:
        _say(f"{exc.filename or opts.path}: {exc.strerror or exc}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted; no partial file was left behind")
        return 130
