"""Format detection from bytes, never from names."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import pytest
import torch

from sandboxload import formats


def sniff(data: bytes) -> str:
    return formats.sniff(io.BytesIO(data))


def saved(obj: object, **kw: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def test_torch_forms() -> None:
    assert sniff(saved({"a": torch.ones(2)})) == formats.TORCH_ZIP
    assert (
        sniff(saved({"a": torch.ones(2)}, _use_new_zipfile_serialization=False))
        == formats.TORCH_LEGACY
    )
    assert (
        sniff(saved([1], _use_new_zipfile_serialization=False, pickle_protocol=4))
        == formats.TORCH_LEGACY
    )


@pytest.mark.parametrize("protocol", range(6))
def test_raw_pickles_of_every_protocol(protocol: int) -> None:
    assert sniff(pickle.dumps({"w": [1.0]}, protocol=protocol)) == formats.PICKLE


def test_safetensors_numpy_tar_torchscript(tmp_path: Path) -> None:
    import numpy as np
    import safetensors.torch

    assert sniff(safetensors.torch.save({"a": torch.ones(3)})) == formats.SAFETENSORS
    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    assert sniff(buf.getvalue()) == formats.NUMPY
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(3))
    assert sniff(buf.getvalue()) == formats.NUMPY
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("pickle")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"N."))
    assert sniff(buf.getvalue()) == formats.TORCH_TAR
    path = tmp_path / "s.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(1, 1)), str(path))
    assert formats.sniff_path(str(path)) == formats.TORCHSCRIPT


def test_odd_inputs() -> None:
    assert sniff(b"") == formats.UNKNOWN
    assert sniff(b"\x00\x01garbage") == formats.UNKNOWN
    assert sniff(b"PK\x03\x04broken zip") == formats.UNKNOWN
    # A safetensors-looking length that overruns the file is not safetensors.
    assert sniff((10**6).to_bytes(8, "little") + b"{}") != formats.SAFETENSORS
    for fmt in (formats.UNKNOWN, formats.ZIP, formats.PICKLE, formats.TORCH_ZIP):
        assert fmt in formats.PICKLE_BASED
    assert formats.SAFETENSORS not in formats.PICKLE_BASED


def test_position_is_restored() -> None:
    f = io.BytesIO(b"xx" + saved([1]))
    f.seek(2)
    assert formats.sniff(f) in (formats.TORCH_ZIP, formats.UNKNOWN)
    assert f.tell() == 2


def test_a_zip_that_zipfile_cannot_read_is_unknown() -> None:
    """zipfile raises NotImplementedError for a "version needed" it does not know; sniffing
    must still classify (found by tests/test_fuzz.py in the real sandbox target)."""
    data = bytearray(saved({"a": torch.ones(2)}))
    at = data.rindex(b"PK\x01\x02")  # the last central directory entry
    data[at + 6] = 64  # version needed to extract: 6.4
    assert sniff(bytes(data)) == formats.UNKNOWN
