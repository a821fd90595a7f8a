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
    """Why the ``.npy`` or zip (``.npz``, or any zip: NumPy loads its ``.npy`` members) open
    as ``f`` (at its start) needs a pickle, or None."""
    is_npy = f.read(6) == b"\x93NUMPY"
    f.seek(0)
    what = "a NumPy file" if is_npy else "a zip"
    try:
        if is_npy:
            _numpy()
            found: Any = "" if _has_objects(f) else None
        else:
            with zipfile.ZipFile(f) as zf:
                if not any(i.filename.endswith(".npy") for i in zf.infolist()):
                    return None
                _numpy()
                found = in_zip(zf)
    except _NoNumpy:
        return f"it is {what} holding NumPy arrays, and NumPy is not installed to check them"
    except Exception as exc:  # hostile bytes raise many types: refused, and typed
        problem = f"{type(exc).__name__}: {exc}"
        return f"it is {what} that cannot be checked for pickled NumPy arrays ({problem})"
    if found is None:
        return None
    where = f" ({found})" if found else ""
    return f"it is a NumPy array of Python objects{where}, which NumPy pickles"


class _NoNumpy(Exception):
    pass


def _numpy() -> None:
    try:
        import numpy  # noqa: F401
    except ImportError:
        raise _NoNumpy from None
