"""Stand-ins for plain Python and NumPy globals: containers, bytes, numbers, ndarrays,
``argparse.Namespace`` and the plain data classes a user allows.
"""

from .errors import Unsupported, need
from .torch_standins import DeviceTensorRef, DType, ints


class ODict(dict):
    """collections.OrderedDict; attributes (a state dict's ``_metadata``) land in __dict__."""


class CounterSI(dict):
    """collections.Counter."""


class NamespaceSI:
    """argparse.Namespace: built by NEWOBJ, filled by BUILD."""

    def __init__(self) -> None:
        pass


class GenericObject:
    """An instance of a class the user allowed (SANDBOXLOAD_ALLOW_GLOBALS): NEWOBJ + BUILD."""

    qualname = ""

    def __init__(self, *args: object, **kwargs: object) -> None:
        # NEWOBJ with no arguments is how pickle makes a plain instance; a call with arguments
        # would run the class's own __init__, which plain data is rebuilt without.
        if args or kwargs:
            raise Unsupported(
                f"a call of the allowed class {self.qualname!r} with arguments (running its "
                "__init__; only instances rebuilt from their attributes are plain data)"
            )


class NPDType:
    """numpy.dtype(code, align, copy) plus its BUILD state, kept as plain data."""

    __slots__ = ("align", "code", "copy", "state")

    def __init__(self, code: object, align: object = False, copy: object = False) -> None:
        need(isinstance(code, str) and len(code) <= 8, "numpy dtype code must be a short str")
        need(type(align) is bool and type(copy) is bool, "numpy dtype flags")
        self.code, self.align, self.copy = code, align, copy
        self.state: tuple | None = None

    def __setstate__(self, state: object) -> None:
        need(isinstance(state, tuple) and 0 < len(state) <= 9, "numpy dtype state")
        if any(x is not None for x in state[2:5]):
            raise Unsupported("structured or sub-array numpy dtypes")
        need(all(x is None or type(x) in (int, str) for x in state), "numpy dtype state")
        self.state = state


class NDArrayType:
    """Stand-in for the class ``numpy.ndarray`` (only ever passed to ``_reconstruct``)."""


class NDArray:
    """An ndarray as numpy pickles it: built by ``_reconstruct`` then ``__setstate__``, or by
    ``_frombuffer``; the parent replays the same numpy calls on validated plain values."""

    __slots__ = ("data", "dtype", "fortran", "shape", "version", "via")

    def __init__(self) -> None:
        self.via = "reconstruct"
        self.version = 1
        self.shape: tuple = ()
        self.dtype: NPDType | None = None
        self.fortran = False
        self.data = b""

    def __setstate__(self, state: object) -> None:
        need(isinstance(state, tuple) and len(state) == 5, "numpy array state")
        version, shape, dtype, fortran, data = state
        need(type(version) is int and isinstance(dtype, NPDType), "numpy array dtype")
        need(
            isinstance(data, (bytes, bytearray)),
            "numpy array data must be bytes (object arrays are refused)",
        )
        self.version = version
        self.shape = ints(shape, "numpy array shape")
        self.dtype = dtype
        self.fortran = bool(fortran)
        self.data = bytes(data)


class NPScalar:
    __slots__ = ("data", "dtype")

    def __init__(self, dtype: NPDType, data: bytes) -> None:
        self.dtype = dtype
        self.data = data


# --- stand-in functions ------------------------------------------------------------------


def codecs_encode(obj, encoding="utf-8", errors="strict"):
    """How protocol-2 pickles spell bytes: _codecs.encode(str, 'latin1')."""
    need(
        isinstance(obj, str) and encoding in ("latin1", "latin-1") and errors == "strict",
        "_codecs.encode is only accepted for latin1 text (pickled bytes)",
    )
    return obj.encode("latin1")


def make_bytearray(data=b""):
    need(isinstance(data, (bytes, bytearray)), "bytearray takes bytes here")
    return bytearray(data)


def make_bytes(data=b""):
    """Protocol 2 spells empty bytes as builtins.bytes()."""
    need(isinstance(data, (bytes, bytearray)), "bytes takes bytes here")
    return bytes(data)


def make_set(items=()):
    need(isinstance(items, (list, tuple)), "set takes a list")
    return set(items)


def make_frozenset(items=()):
    need(isinstance(items, (list, tuple)), "frozenset takes a list")
    return frozenset(items)


def make_complex(real=0.0, imag=0.0):
    need(type(real) in (int, float) and type(imag) in (int, float), "complex takes numbers")
    return complex(real, imag)


def make_odict(items=None):
    out = ODict()
    if items is not None:
        need(isinstance(items, (list, tuple)), "OrderedDict items")
        for pair in items:
            need(isinstance(pair, (list, tuple)) and len(pair) == 2, "OrderedDict item")
            out[pair[0]] = pair[1]
    return out


def make_counter(mapping=None):
    out = CounterSI()
    if mapping is not None:
        need(isinstance(mapping, dict), "Counter takes a dict")
        out.update(mapping)
    return out


def np_reconstruct(cls, shape, dtype_code):
    need(cls is NDArrayType, "numpy _reconstruct only builds ndarray")
    return NDArray()


def np_scalar(dtype, data=None):
    need(isinstance(dtype, NPDType) and isinstance(data, bytes), "numpy scalar")
    return NPScalar(dtype, data)


def np_frombuffer(buf, dtype, shape, order):
    need(isinstance(buf, (bytes, bytearray)) and isinstance(dtype, NPDType), "numpy buffer")
    need(order in ("C", "F"), "numpy order")
    arr = NDArray()
    arr.via = "frombuffer"
    arr.shape = ints(shape, "numpy shape")
    arr.dtype = dtype
    arr.fortran = order == "F"
    arr.data = bytes(buf)
    return arr


def copyreg_reconstructor(cls, base, state):
    """Protocol 0/1 spelling of ``cls.__new__(cls)``, only for stand-in classes."""
    need(base is object and state is None, "copyreg._reconstructor base")
    need(
        isinstance(cls, type) and issubclass(cls, (NamespaceSI, GenericObject)),
        "copyreg._reconstructor class",
    )
    return cls.__new__(cls)


def rebuild_device_tensor_from_numpy(data, dtype, device, requires_grad):
    need(isinstance(data, NDArray) and isinstance(dtype, DType), "device tensor")
    need(isinstance(device, str) and type(requires_grad) is bool, "device tensor")
    return DeviceTensorRef(data, dtype.name, device, requires_grad)
