"""Whether a NumPy file holds Python objects (which NumPy pickles), from its headers alone.

Used where a ``.npy``/``.npz`` is let through only if it needs no pickle: ``convert`` (what
a converted folder carries over) and the ``numpy.load`` patch. Reads each array's header
with NumPy's own parser (``ast.literal_eval`` of a bounded header), never its data.
"""

from __future__ import annotations

import zipfile
from typing import IO, Any

MAX_HEADER = 1 << 16


def _has_objects(member: IO[bytes]) -> bool:
    from numpy.lib import format as npformat

    version = npformat.read_magic(member)
    reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    _shape, _order, dtype = reader(member, max_header_size=MAX_HEADER)
    return bool(dtype.hasobject)


def in_zip(zf: zipfile.ZipFile) -> str | None:
    """The first ``.npy`` member of an ``.npz`` that holds objects, or None."""
    for info in zf.infolist():
        if info.filename.endswith(".npy"):
            with zf.open(info) as member:
                if _has_objects(member):
                    return info.filename
    return None


def why(f: IO[bytes]) -> str | None:
    """Why the ``.npy``/``.npz`` open as ``f`` (at its start) needs a pickle, or None."""
    try:
        import numpy  # noqa: F401
    except ImportError:
        return "it is a NumPy file and NumPy is not installed to check it for objects"
    try:
        if f.read(6) == b"\x93NUMPY":
            f.seek(0)
            found: Any = "" if _has_objects(f) else None
        else:
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                found = in_zip(zf)
    except (ValueError, zipfile.BadZipFile, EOFError, OSError) as exc:
        return f"it is a NumPy file that cannot be checked ({exc})"
    if found is None:
        return None
    where = f" ({found})" if found else ""
    return f"it is a NumPy array of Python objects{where}, which NumPy pickles"
