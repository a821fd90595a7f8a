"""atheris target: the child's restricted unpickler and describer on any pickle bytes,
in-process (every global is an inert stand-in: nothing a pickle names is imported or
called). The zip target rarely gets past the CRC of data.pkl; this one starts there."""

import _pickle
import io
import os

import atheris

with atheris.instrument_imports():
    from sandboxload.sandbox.child import describe, readers
    from sandboxload.sandbox.child.errors import Malformed, Refused, Unsupported
    from sandboxload.sandbox.child.unpickler import RestrictedUnpickler

CAP = 1 << 20
MEMFD = os.memfd_create("fuzz-out")
os.ftruncate(MEMFD, CAP)
# What worker.py reports as "malformed" rather than a crash; a hang or a crash is the bug.
EXPECTED = (Malformed, Refused, Unsupported, ValueError, TypeError, KeyError, EOFError,
            IndexError, AttributeError, RecursionError, MemoryError, OverflowError,
            UnicodeDecodeError, _pickle.UnpicklingError)  # fmt: skip


def seeds() -> list[bytes]:
    import collections
    import pickle
    import zipfile

    import torch

    out = [pickle.dumps({"a": [1, 2.5, "x", b"y", None, True]}, protocol=p) for p in range(6)]
    for obj in (
        {"w": torch.arange(6.0), "o": collections.OrderedDict(a=torch.ones(2))},
        [torch.Size([2, 3]), torch.device("cpu"), torch.float16, torch.strided],
    ):
        buf = io.BytesIO()
        torch.save(obj, buf)
        with zipfile.ZipFile(buf) as zf:
            out.append(zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl"))))
    return out


def _memo_bomb(data: bytes) -> bool:
    """A PUT to memo index N makes CPython's unpickler allocate ~16 N bytes at once. The
    child's RLIMIT_AS turns that into SandboxMemoryError (tests/test_sandbox_limits.py); in
    this process it would only exhaust the machine, so such inputs are skipped here."""
    import pickletools

    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > 1 << 20:
                return True
    except Exception:  # the unpickler will say what is wrong with it
        return False
    return False


def test_one(data: bytes) -> None:
    if _memo_bomb(data):
        return
    out = readers.Output(MEMFD, CAP)

    def persistent_load(pid: object) -> object:
        if not (isinstance(pid, tuple) and len(pid) == 5):
            raise Malformed("persistent id")
        return out.add_storage("float32", 16, "file", 0, "cpu")

    try:
        root = RestrictedUnpickler(io.BytesIO(data), persistent_load).load()
        describe.Describer(out.write_bytes).describe(root)
    except EXPECTED:
        pass


if __name__ == "__main__":
    from _run import fuzz

    fuzz(test_one, seeds())
