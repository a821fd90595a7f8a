"""atheris target: the parent's description validator, on any JSON a child could send
(only CorruptCheckpointError / UnsafeGlobalError may escape; every tensor must read inside
its storage)."""

import json

import atheris

with atheris.instrument_imports():
    import torch

    from sandboxload.errors import CorruptCheckpointError, UnsafeGlobalError
    from sandboxload.sandbox.rebuild import rebuild

FILE = bytes(range(256)) * 4
MEMFD = bytes(1024)


def _storage(data: bytes) -> torch.UntypedStorage:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).untyped_storage()


SEED = {
    "version": 1,
    "root": 3,
    "nodes": [
        ["tensor", 0, 0, [4], [1], False, "float32", {}, {}],
        ["tensor", 1, 1, [2, 2], [2, 1], False, "float64", {}, {}],
        ["str", "w"],
        ["dict", [[2, 0], [2, 1]]],
    ],
    "storages": [
        ["float32", 64, "file", 0, "cpu", None],
        ["float64", 40, "view", 8, "cpu", 0],
    ],
}


def test_one(data: bytes) -> None:
    try:
        description = json.loads(data)
    except (ValueError, RecursionError):
        return
    try:
        out = rebuild(
            description,
            "<fuzz>",
            map_location=None,
            file_storage=lambda: _storage(FILE),
            memfd_storage=lambda: _storage(MEMFD),
            file_size=len(FILE),
            memfd_size=len(MEMFD),
            extra_globals=(),
        )
    except (CorruptCheckpointError, UnsafeGlobalError):
        return
    for t in out.values() if isinstance(out, dict) else [out]:
        if isinstance(t, torch.Tensor) and t.numel():
            span = t.storage_offset() + sum(
                (n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True)
            )
            assert (span + 1) * t.element_size() <= t.untyped_storage().nbytes()


if __name__ == "__main__":
    from _run import fuzz

    fuzz(test_one, [json.dumps(SEED).encode()])
