"""Files a converted folder would carry over unchanged: none of them may hold a pickle.

A folder's configs, tokenizer files and NumPy arrays are copied as they are, so each is
sniffed first, whatever its name: a torch checkpoint or TorchScript archive under another
name (``ckpt.pth.tar``), a pickle stream (``model.pickle``, with or without its protocol
header, protocol-0 text too: :mod:`sandboxload.pickleprobe`), a NumPy array of Python objects
(pickled inside a ``.npy``, or a member of any zip) would otherwise reach the output, which
promises none.
"""

from __future__ import annotations

import os

from .. import formats, numpyobjects, pickleprobe
from ..fileid import open_regular

# Formats that hold a pickle stream, by their magic: never carried over.
PICKLED = (formats.TORCH_ZIP, formats.TORCH_LEGACY, formats.TORCH_TAR, formats.TORCHSCRIPT)


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
        if fmt in (formats.NUMPY, formats.ZIP):  # any zip: .npy members are NumPy's to load
            f.seek(0)
            why = numpyobjects.why(f)
            if why is not None:
                return why
        f.seek(0)
        if fmt == formats.PICKLE and f.read(1) == b"\x80":
            return "it is a binary pickle"  # even of plain values: the output holds none
        # Whatever else it is too: a safetensors file can be a pickle as well (its header
        # length's first byte an opcode), and torch.load of it would run the pickle.
        return pickleprobe.pickled_file(f, os.fstat(fd).st_size)
