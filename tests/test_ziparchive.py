"""The child's strict zip reader agrees with zipfile on what torch and zipfile write."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import torch

from sandboxload.sandbox.child import ziparchive
from sandboxload.sandbox.child.errors import Malformed


def archive(data: bytes) -> ziparchive.ZipArchive:
    return ziparchive.ZipArchive(lambda n, off: data[off : off + n], len(data))


def test_torch_zip_records_and_offsets(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.arange(10.0), "b": torch.ones(3)}, path)
    data = path.read_bytes()
    za, zf = archive(data), zipfile.ZipFile(path)
    assert za.names() == zf.namelist()
    for info in zf.infolist():
        assert za.read(info.filename, 1 << 20) == zf.read(info.filename)
        start = za.data_offset(za.entry(info.filename))
        assert data[start : start + info.file_size] == zf.read(info.filename)
        if "/data/" in info.filename:
            assert start % 64 == 0  # torch aligns storages: zero-copy mapping relies on it


def test_zip64_and_deflate() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        with zf.open("a/data.pkl", "w", force_zip64=True) as f:
            f.write(b"stored payload")
        zf.writestr(zipfile.ZipInfo("a/x"), b"y" * 1000, compress_type=zipfile.ZIP_DEFLATED)
    za = archive(buf.getvalue())
    assert za.read("a/data.pkl", 100) == b"stored payload"
    assert za.read("a/x", 1000) == b"y" * 1000
    with pytest.raises(Malformed, match="cap"):
        za.read("a/x", 999)


def test_rejects_broken_archives() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/data.pkl", b"abc")
    good = buf.getvalue()
    crc_bad = bytearray(good)
    crc_bad[crc_bad.index(b"abc")] = ord("x")
    for data, needle in [
        (good[:-22], "end-of-central"),
        (bytes(crc_bad), "CRC"),
        (good[:10] + good[40:], None),
    ]:
        with pytest.raises(Malformed, match=needle):
            archive(data).read("a/data.pkl", 100)


CRASHERS = Path(__file__).parent / "crashers"


@pytest.mark.parametrize("name", sorted(p.name for p in CRASHERS.glob("zip-*")))
def test_fuzz_crashers_are_malformed(name: str) -> None:
    """Inputs the coverage-guided fuzzer (fuzz/child_zip.py) found escaping as something
    other than the reader's own error."""
    data = (CRASHERS / name).read_bytes()
    fd = os.memfd_create("crasher")  # pread on a real descriptor, as the child reads
    try:
        os.write(fd, data)
        with pytest.raises(Malformed):
            zf = ziparchive.ZipArchive(lambda n, off: os.pread(fd, n, off), len(data))
            zf.read("archive/data.pkl", 1 << 20)
    finally:
        os.close(fd)
