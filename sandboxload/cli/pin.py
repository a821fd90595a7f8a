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
from ..wording import count, shown
from . import progress
from .inputs import no_weight_files


def pin(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="sandboxload pin",
        description="Write a sha256sum manifest of weight files "
        "(directories: every weight file below them, and every file an index names).",
    )
    ap.add_argument("--manifest", required=True, help="the manifest to write")
    ap.add_argument("paths", nargs="+")
    opts = ap.parse_args(argv)
    found = weight_files(opts.paths)
    for link in found.linked_dirs:
        sys.stderr.write(
            f"sandboxload pin: {shown(link)} is a linked directory: not followed, so nothing in "
            "it is pinned (a load through it is refused as unpinned); pin its target by its "
            "own path\n"
        )
    for index, why in found.unread_indexes:
        sys.stderr.write(
            f"sandboxload pin: cannot read the weight_map of the index {shown(index)} ({why}), "
            "so the files it names cannot be pinned; nothing was written\n"
        )
    if found.unread_indexes:
        return 2
    if not found.files:
        return no_weight_files("pin", opts.paths)
    try:
        _write(found.files, opts.manifest)
    except (OSError, PolicyError) as exc:  # NotARegularFileError included: nothing is written
        sys.stderr.write(f"sandboxload pin: {shown(str(exc))}\n")
        return 2
    print(f"pinned {count(len(found.files), 'file')} in {shown(opts.manifest)}")
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
        pins = pinning.manifest(opts.manifest)
    except (OSError, PolicyError) as exc:
        sys.stderr.write(f"sandboxload verify: {shown(str(exc))}\n")
        return 2
    # Every entry is compared, also a second name of one real file (a pinned file replaced
    # by a link to another pinned file must not pass); digest_fd hashes each file once.
    bad = sum(not _verify(path, expected) for path, expected in sorted(pins.listed.items()))
    found = weight_files(opts.paths)
    for link in found.linked_dirs:
        print(
            f"LINKED   {shown(link)} (a linked directory: not followed, so the weight files "
            "in it are not checked; verify its target by its own path)"
        )
    for index, why in found.unread_indexes:
        print(f"UNREAD   {shown(index)} (a shard index whose weight_map cannot be read: {why})")
    bad += len(found.linked_dirs) + len(found.unread_indexes)
    for path in found.files:
        if pinning.pinned_digest(pins, path) is not None:
            continue
        print(f"UNPINNED {shown(path)} (a weight file the manifest does not list)")
        bad += 1
    return 1 if bad else 0


def _verify(path: str, expected: str) -> bool:
    """Check one entry, printing its verdict line."""
    try:
        fd = open_regular(path)
    except NotARegularFileError as exc:
        print(f"REFUSED  {shown(path)} (a {exc.kind}, not a regular file)")
        return False
    except OSError as exc:
        print(f"MISSING  {shown(path)} ({exc.strerror})")
        return False
    bar = progress.bar(os.fstat(fd).st_size, shown(os.path.basename(path)), unit="B")
    try:
        actual = pinning.digest_fd(fd, bar.update)
    finally:
        bar.close()  # before the verdict line, which the bar would otherwise overwrite
        os.close(fd)
    print(f"{'OK' if actual == expected else 'MISMATCH'}  {shown(path)}")
    return actual == expected


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
