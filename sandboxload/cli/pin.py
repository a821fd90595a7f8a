"""``sandboxload pin`` and ``sandboxload verify``: write and check a hash manifest.

Both show a bar of the bytes hashed on a terminal (hashing a large model takes a while); a
pipe or a CI log gets none (:mod:`.progress`).
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import pinning
from ..errors import NotARegularFileError, PolicyError
from ..fileid import open_regular
from ..modelfolder import weight_files
from ..wording import count
from . import progress
from .inputs import no_weight_files


def pin(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="sandboxload pin",
        description="Write a sha256sum manifest of weight files "
        "(directories: every weight file below them).",
    )
    ap.add_argument("--manifest", required=True, help="the manifest to write")
    ap.add_argument("paths", nargs="+")
    opts = ap.parse_args(argv)
    files = weight_files(opts.paths)
    if not files:
        return no_weight_files("pin", opts.paths)
    try:
        _write(files, opts.manifest)
    except OSError as exc:  # NotARegularFileError included: nothing is written then
        sys.stderr.write(f"sandboxload pin: {exc}\n")
        return 2
    print(f"pinned {count(len(files), 'file')} in {opts.manifest}")
    return 0


def verify(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="sandboxload verify",
        description="Check every file a manifest lists; with PATHs, also that every weight "
        "file below them is listed (a file added after pinning passes a check of the list "
        "alone).",
    )
    ap.add_argument("--manifest", required=True)
    ap.add_argument(
        "paths", nargs="*", metavar="PATH", help="folders whose weight files must all be listed"
    )
    opts = ap.parse_args(argv)
    try:
        listed = pinning.manifest(opts.manifest)
    except (OSError, PolicyError) as exc:
        sys.stderr.write(f"sandboxload verify: {exc}\n")
        return 2
    bad = 0
    seen: set[str] = set()
    for path, expected in sorted(listed.by_path.items()):
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            fd = open_regular(path)
        except NotARegularFileError as exc:
            print(f"REFUSED  {path} (a {exc.kind}, not a regular file)")
            bad += 1
            continue
        except OSError as exc:
            print(f"MISSING  {path} ({exc.strerror})")
            bad += 1
            continue
        bar = progress.bar(os.fstat(fd).st_size, os.path.basename(path), unit="B")
        try:
            actual = pinning.digest_fd(fd, bar.update)
        finally:
            bar.close()  # before the verdict line, which the bar would otherwise overwrite
            os.close(fd)
        ok = actual == expected
        bad += not ok
        print(f"{'OK' if ok else 'MISMATCH'}  {path}")
    for path in weight_files(opts.paths):
        if pinning.pinned_digest(listed, path) is not None:
            continue
        print(f"UNPINNED {path} (a weight file the manifest does not list)")
        bad += 1
    return 1 if bad else 0


def _write(files: list[str], manifest: str) -> None:
    bar = progress.bar(sum(map(_size, files)), "hashing", unit="B")
    try:
        pinning.write_manifest(files, manifest, bar.update)
    finally:
        bar.close()  # before any message, which the bar would otherwise overwrite


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # write_manifest reports it
