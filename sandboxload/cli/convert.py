"""``sandboxload convert PATH``: pickle checkpoints -> safetensors, parsed only in the sandbox.

PATH is a checkpoint or a model folder. Each checkpoint is parsed by the confined child
(never unpickled here), reduced to its name -> tensor map (every name with bytes of its own,
tied weights too), written under a temporary name, read back and
compared bit for bit, and only then renamed into place. A folder's shard index becomes a
``model.safetensors.index.json``; sentence-transformers module folders (``2_Dense/``) convert
like the rest; so does a ``torch.distributed.checkpoint`` (``.metadata`` and ``*.distcp``), into
one ``model.safetensors``.

Where the output goes: a file converts beside itself (``pytorch_model.bin`` ->
``model.safetensors``; ``x.pt`` -> ``x.safetensors``), or into ``--out DIR``; a folder converts
into a new folder (``--out DIR``, default ``PATH-safetensors`` beside it) that holds everything
else of the folder unchanged and no pickle, or ``--in-place`` beside its pickles
(``--delete-pickle`` then removes them, once everything was verified).

Exit status: 0 converted; 1 a checkpoint was refused (a global that is not data, what
safetensors cannot store, a pin that does not match); 2 bad usage or an unreadable path;
130 interrupted, 143 terminated (nothing half-written is left either way).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys

from ..conversion import folder
from ..conversion.folder import Converted
from ..conversion.layout import plan, target_name
from ..errors import SandboxLoadError
from ..modelfolder import is_dcp_file
from ..wording import count, shown
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


def _report(c: Converted) -> None:
    extra = f"; left out: {', '.join(c.dropped)}" if c.dropped else ""
    size = f"{c.nbytes / 1e6:.1f} MB"
    print(shown(f"converted {c.source} -> {c.dest} ({c.tensors} tensors, {size}{extra})"))


def _file(opts: argparse.Namespace) -> int:
    path = opts.path
    if is_dcp_file(path):
        _say(
            f"{shown(path)} is one file of a torch.distributed.checkpoint; convert the folder "
            "that holds it"
        )
        return 2
    name = target_name(os.path.basename(path))
    dest = os.path.join(opts.out or os.path.dirname(os.path.abspath(path)), name)
    if os.path.lexists(dest):
        _say(f"{shown(dest)} already exists; remove it or choose another --out")
        return 2
    made = opts.out is not None and not os.path.isdir(opts.out)
    if made:
        os.makedirs(opts.out)
    try:
        c = folder.convert_one(path, dest, opts.key, opts.drop_non_tensors)
    except BaseException:
        if made:
            shutil.rmtree(opts.out, ignore_errors=True)  # ours, and holding nothing
        raise
    _report(c)
    if opts.delete_pickle:
        os.unlink(path)
        print(shown(f"removed {path}"))
    return 0


def _folder(opts: argparse.Namespace) -> int:
    root = os.path.realpath(opts.path)
    out = None if opts.in_place else os.path.abspath(opts.out or root.rstrip("/") + "-safetensors")
    if out is not None:
        if os.path.commonpath([root, os.path.realpath(out)]) == root:
            _say(f"--out {shown(out)} is inside the folder being converted; choose another")
            return 2
        if os.path.lexists(out) and not (os.path.isdir(out) and not os.listdir(out)):
            _say(f"{shown(out)} already exists; remove it or choose another --out")
            return 2
    p = plan(root, opts.exclude, in_place=out is None)
    if not p.convert and not p.dcp:
        _say(f"no pickle checkpoint found under {shown(root)}; nothing to convert")
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
        print(shown(f"left out {os.path.join(root, rel)} (--exclude)"))
    print(shown(f"converted {count(len(done), 'checkpoint')} into {out or root}"))
    return 0


class _Terminated(BaseException):
    """SIGTERM (a CI timeout, a container stop): unwound like Ctrl-C, temporary files too."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: list[str]) -> int:
    opts = _args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _folder(opts) if os.path.isdir(opts.path) else _file(opts)
    except SandboxLoadError as exc:
        _say(shown(str(exc)))
        file = getattr(exc, "file", None)
        if (
            os.path.isdir(opts.path)
            and isinstance(file, str)
            and os.path.isfile(file)
            and not is_dcp_file(file)  # a distributed checkpoint's files are all weights
        ):
            # Folders often hold pickles that are not weights (training_args.bin).
            rel = os.path.relpath(file, os.path.realpath(opts.path))
            _say(shown(f"if {rel} is not part of the model's weights: --exclude {rel}"))
        return 1
    except OSError as exc:
        _say(shown(f"{exc.filename or opts.path}: {exc.strerror or exc}"))
        return 2
    except KeyboardInterrupt:
        _say("interrupted; no partial file was left behind")
        return 130
    except _Terminated:
        _say("terminated; no partial file was left behind")
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
