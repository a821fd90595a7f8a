"""atheris target: the safetensors header check (only InvalidSafetensorsError may escape)."""

import contextlib

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


if __name__ == "__main__":
    from _run import fuzz

    fuzz(test_one, seeds())
