"""atheris target: the child's zip reader and restricted unpickler, in-process (they import
and call nothing a file names, so running them here is safe); only the child's own outcomes
(Malformed, Refused, Unsupported) or the errors worker.py turns into "malformed" may escape."""

import io

import atheris

with atheris.instrument_imports():
    from sandboxload.sandbox.child import describe, readers
    from sandboxload.sandbox.child.errors import Malformed, Refused, Unsupported

CAP = 1 << 20


class _Memfd:
    """readers.Output writes with os.pwrite: give it a real, small memfd."""

    def __init__(self) -> None:
        import os

        self.fd = os.memfd_create("fuzz")
        os.ftruncate(self.fd, CAP)


MEMFD = _Memfd()


def seeds() -> list[bytes]:
    import collections

    import torch

    out = []
    for obj in (
        {"w": torch.arange(6.0), "t": (1, "x", None), "o": collections.OrderedDict(a=1)},
        [torch.ones(2, 3)[:, 1], torch.zeros(0, dtype=torch.int8)],
    ):
        buf = io.BytesIO()
        torch.save(obj, buf)
        out.append(buf.getvalue())
    return out


def test_one(data: bytes) -> None:
    import os

    fd = os.memfd_create("ckpt")
    try:
        os.write(fd, data)
        out = readers.Output(MEMFD.fd, CAP)
        try:
            root = readers.read_zip(fd, len(data), out, CAP)
            describe.Describer(out.write_bytes).describe(root)
        except (
            Malformed,
            Refused,
            Unsupported,
            ValueError,
            TypeError,
            KeyError,
            EOFError,
            IndexError,
            AttributeError,
            RecursionError,
            MemoryError,
            OverflowError,
        ):
            # worker.py reports any Exception as "malformed"; what must never happen is a
            # crash or a hang.
            pass
    finally:
        os.close(fd)


if __name__ == "__main__":
    from _run import fuzz

    fuzz(test_one, seeds())
