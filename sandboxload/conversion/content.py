"""Files a converted folder would carry over unchanged: none of them may hold a pickle.

A folder's configs, tokenizer files and NumPy arrays are copied as they are, so each is
sniffed first, whatever its name: a torch checkpoint or TorchScript archive under another
name (``ckpt.pth.tar``), a binary pickle (``model.pickle``), a NumPy array of Python objects
(pickled inside ``.npy``/``.npz``) would otherwise reach the output, which promises none.
(A protocol-0 pickle is text and cannot be told from text; the loaders still gate it.)
"""

from __future__ import annotations

import io
import os
import zipfile

from .. import formats
from ..fileid import open_regular

# Formats that hold a pickle stream, by their magic: never carried over.
PICKLED = (formats.TORCH_ZIP, formats.TORCH_LEGACY, formats.TORCH_TAR, formats.TORCHSCRIPT)
MAX_NPY_HEADER = 1 << 16


def pickle_inside(path: str) -> str | None:
    """Why the file at ``path`` holds a pickle, or None."""
    fd = open_regular(path)
    try:
        return pickle_in(fd)
    finally:
        os.close(fd)


def pickle_in(fd: int) -> str | None:
    """Why the regular file open on ``fd`` holds a pickle, or None (``scan`` asks it of
    every file that is not named like a weight file)."""
    with os.fdopen(fd, "rb", closefd=False) as f:
        fmt = formats.sniff(f)
        if fmt in PICKLED:
            return f"it is {formats.POLICY_NAME.get(fmt, fmt)} data (a pickle)"
        f.seek(0)
        head = f.read(2)
        if fmt == formats.PICKLE and head[:1] == b"\x80":
            return "it is a binary pickle"
        if fmt == formats.NUMPY:
            f.seek(0)
            return _numpy_objects(f)
    return None


def _numpy_objects(f: io.BufferedReader) -> str | None:
    """Whether a .npy (or each .npy of a .npz) holds Python objects, which NumPy pickles."""
    try:
        from numpy.lib import format as npformat
    except ImportError:
        return "it is a NumPy file and NumPy is not installed to check it for objects"
    head = f.read(6)
    f.seek(0)
    members: list[tuple[str, io.BufferedReader]] = []
    try:
        if head == b"\x93NUMPY":
            members.append(("", f))
        else:
            zf = zipfile.ZipFile(f)
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    members.append((info.filename, zf.open(info)))  # type: ignore[arg-type]
        for name, member in members:
            version = npformat.read_magic(member)
            reader = (
                npformat.read_array_header_1_0
                if version == (1, 0)
                else npformat.read_array_header_2_0
            )
            _shape, _order, dtype = reader(member, max_header_size=MAX_NPY_HEADER)
            if dtype.hasobject:
                where = f" ({name})" if name else ""
                return f"it is a NumPy array of Python objects{where}, which NumPy pickles"
    except (ValueError, zipfile.BadZipFile, EOFError, OSError) as exc:
        return f"it is a NumPy file that cannot be checked ({exc})"
    return None
