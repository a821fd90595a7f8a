"""NumPy's pickle paths: ``numpy.load(..., allow_pickle=True)`` and ``format.read_array``.

A ``.npy``/``.npz`` array of Python objects, or a plain pickle given to ``numpy.load``, is
unpickled by NumPy in this process when the caller passes ``allow_pickle=True``: a model
folder's ``.npy`` would run whatever it names. With sandboxload active the caller's
``allow_pickle=True`` is not honoured (only the operator's ``pickle=allow`` is, as for
``torch.load``): the array loads as with ``allow_pickle=False``, and where that needs a
pickle the load is refused with :class:`PickleRefusedError` naming the file. An ``.npz``
is checked member by member when it is opened (NumPy itself reads members lazily), so the
refusal reaches the ``numpy.load`` call, not some later ``npz[key]``. ``allow_pickle=False``
(NumPy's default) is untouched.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import numpyobjects, policy
from ..errors import PickleRefusedError
from ..refusals import refuse
from ._common import wrap

HOW_TO = (
    "NumPy pickles object arrays; save plain numeric arrays (or safetensors) instead, or set "
    "SANDBOXLOAD_PICKLE=allow to let NumPy unpickle it in-process if you trust the file."
)
# What NumPy says when allow_pickle=False stops it: the file needed a pickle.
NEEDS_PICKLE = ("allow_pickle=False", "allow_pickle=")


def _name(file: Any) -> str:
    if isinstance(file, (str, os.PathLike)):
        return os.fspath(file)
    return str(getattr(file, "name", "<file object>"))


def _allowed() -> bool:
    return policy.current().pickle == "allow"


def _refuse(file: Any, exc: ValueError) -> None:
    if any(s in str(exc) for s in NEEDS_PICKLE):
        refuse(PickleRefusedError(_name(file), "numpy", HOW_TO))


def _guarded_load(original: Callable[..., Any]) -> Callable[..., Any]:
    def load(
        file: Any, mmap_mode: Any = None, allow_pickle: bool = False, *args: Any, **kw: Any
    ) -> Any:
        if not allow_pickle or _allowed():
            return original(file, mmap_mode, allow_pickle, *args, **kw)
        try:
            result = original(file, mmap_mode, False, *args, **kw)
        except ValueError as exc:
            _refuse(file, exc)
            raise
        zf = getattr(result, "zip", None)
        if isinstance(zf, zipfile.ZipFile):  # an NpzFile: its members are read lazily
            try:
                member = numpyobjects.in_zip(zf)
            except Exception:  # NumPy's own read of that member reports it
                member = None
            if member is not None:
                result.close()
                refuse(PickleRefusedError(f"{_name(file)}[{member}]", "numpy", HOW_TO))
        return result

    return load


def _guarded_read_array(original: Callable[..., Any]) -> Callable[..., Any]:
    def read_array(fp: Any, allow_pickle: bool = False, *args: Any, **kw: Any) -> Any:
        if not allow_pickle or _allowed():
            return original(fp, allow_pickle, *args, **kw)
        try:
            return original(fp, False, *args, **kw)
        except ValueError as exc:
            _refuse(fp, exc)
            raise

    return read_array


def patch(module: ModuleType) -> None:
    wrap(module, "load", _guarded_load)


def patch_format(module: ModuleType) -> None:
    wrap(module, "read_array", _guarded_read_array)
