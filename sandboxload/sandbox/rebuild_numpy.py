"""NumPy values inside a checkpoint: numpy's own unpickling calls, replayed on validated
plain values (numeric dtypes only; no object arrays, no structured dtypes)."""

from __future__ import annotations

import base64
import importlib
import math
import re
from collections.abc import Callable
from typing import Any

from .protocol import NDARRAY_VIA
from .validate import check, int_, ints, str_

_NUMPY_CODE = re.compile(r"[<>|=]?[biufc?][0-9]{0,2}")


def _np_module(name: str) -> Any:
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{name}")


def dtype(args: list[Any]) -> Any:
    import numpy as np

    code, align, copy, state = args
    check(
        _NUMPY_CODE.fullmatch(str_(code, "numpy dtype", 8)) is not None,
        "numpy dtype must be plain numeric",
    )
    check(type(align) is bool and type(copy) is bool, "numpy dtype flags")
    result = np.dtype(code, align, copy)
    check(
        result.kind in "biufc" and result.fields is None and not result.hasobject,
        "numpy dtype must be plain numeric",
    )
    if state is None:
        return result
    # Only the byte order is taken from the file; the rest of the state must be exactly what
    # numpy itself writes for that dtype (its flags and sizes are never replayed as given).
    check(isinstance(state, list) and len(state) >= 2, "numpy dtype state")
    order = state[1]
    check(order in ("<", ">", "|", "="), "numpy dtype byte order")
    reference = result.newbyteorder(order) if order in ("<", ">") else result
    canonical = reference.__reduce__()[2]
    check(list(canonical) == state, "numpy dtype state is not the one numpy writes")
    result.__setstate__(canonical)  # numpy's own unpickling step, with numpy's own state
    return result


def _dtype_ref(value: Any) -> Any:
    import numpy as np

    check(isinstance(value, np.dtype), "numpy dtype reference")
    return value


def scalar(args: list[Any], ref: Callable[[Any], Any]) -> Any:
    dt = _dtype_ref(ref(args[0]))
    raw = base64.b64decode(str_(args[1], "numpy scalar", 64), validate=True)
    check(len(raw) == dt.itemsize, "numpy scalar size")
    return _np_module("multiarray").scalar(dt, raw)


def ndarray(
    args: list[Any],
    ref: Callable[[Any], Any],
    memfd_bytes: Callable[[int, int], bytes],
    memfd_size: int,
) -> Any:
    import numpy as np

    via, version, dtype_id, shape, fortran, offset, nbytes = args
    check(via in NDARRAY_VIA, "ndarray")
    dt = _dtype_ref(ref(dtype_id))
    shape = tuple(ints(shape, "shape"))
    check(type(fortran) is bool and type(version) is int, "ndarray")
    offset, nbytes = int_(offset, "offset", 0, memfd_size), int_(nbytes, "nbytes", 0, memfd_size)
    check(
        nbytes == math.prod(shape) * dt.itemsize and offset + nbytes <= memfd_size,
        "ndarray bounds",
    )
    raw = memfd_bytes(offset, nbytes) if nbytes else b""
    if via == "frombuffer":
        return _np_module("numeric")._frombuffer(raw, dt, shape, "F" if fortran else "C")
    arr = _np_module("multiarray")._reconstruct(np.ndarray, (0,), b"b")
    arr.__setstate__((version, shape, dt, fortran, raw))
    return arr
