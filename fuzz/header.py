"""atheris target: the safetensors header check (only InvalidSafetensorsError may escape)."""

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from sandboxload.errors import InvalidSafetensorsError
    from sandboxload.safetensors_header import parse_header


def seeds() -> list[bytes]:
    import safetensors.torch
    import torch

    return [
        safetensors.torch.save({"a": torch.ones(3), "b": torch.arange(4, dtype=torch.int16)}),
        safetensors.torch.save({"x": torch.zeros(0)}, metadata={"format": "pt"}),
    ]


def test_one(data: bytes) -> None:
    with contextlib.suppress(InvalidSafetensorsError):
        parse_header(data, len(data), "<fuzz>")


def main() -> None:
    """Seed a corpus from real files (libFuzzer takes corpus folders as arguments), then fuzz."""
    import os
    import tempfile

    corpus = tempfile.mkdtemp(prefix="sandboxload-fuzz-")
    for i, seed in enumerate(seeds()):
        with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
            f.write(seed)
    atheris.Setup([*sys.argv, corpus], test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
