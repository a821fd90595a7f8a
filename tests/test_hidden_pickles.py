"""Pickles a folder can hide from a check by their first bytes, and a zip that torch and
sandboxload read as two different archives (found by the third attack review). Each attack is
proven live without sandboxload first, then refused by ``convert``, ``scan`` or the load."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import sandboxload
from sandboxload.errors import CorruptCheckpointError
from sandboxload.pickleprobe import pickled

from .attacks import TECHNIQUES, payload
from .helpers import Payload, run_cli, run_py


def stripped(obj: object, protocol: int) -> bytes:
    """A pickle without its PROTO header: ``pickle.load`` takes it all the same."""
    data = pickle.dumps(obj, protocol)
    assert data[:1] == b"\x80"
    return data[2:]


# --- the probe: what pickle.load would act on, whatever the first byte -------------------


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_the_probe_finds_payloads_of_every_protocol_with_or_without_header(
    protocol: int, tmp_path: Path
) -> None:
    data = pickle.dumps(Payload(tmp_path / "c"), protocol)
    forms = [data] if protocol < 2 else [data, stripped(Payload(tmp_path / "c"), protocol)]
    for form in forms:
        assert pickled(form, whole=True), form[:20]
        assert pickled(form[: len(form) // 2], whole=False)  # the rest may come later


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_the_probe_finds_every_technique(technique: str, tmp_path: Path) -> None:
    assert pickled(payload(technique, tmp_path / "c"), whole=True), technique


@pytest.mark.parametrize(
    "text",
    [
        b"[PAD]\n[unused0]\nthe\n",
        b'{"model_type": "bert"}',
        b"# Model card\nIt is good.\n",
        b"README text here.",
        b"I am text\n",
        b"config = 1\nsecond line\n",
        b"",
        bytes(range(256)) * 64,  # binary that is no pickle (a sentencepiece model, an image)
    ],
)
def test_the_probe_passes_text_and_other_binaries(text: bytes) -> None:
    assert pickled(text, whole=True) is None


# --- convert and scan with such files beside the weights ----------------------------------


def folder_with(tmp_path: Path, name: str, data: bytes) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    torch.save({"w": torch.ones(2)}, model / "pytorch_model.bin")
    (model / name).write_bytes(data)
    return model


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pickle_without_its_header_is_not_carried_over_nor_passed(
    tmp_path: Path, protocol: int
) -> None:
    canary = tmp_path / "CANARY"
    data = stripped(Payload(canary), protocol)
    pickle.loads(data)  # live: a consumer's pickle.load runs it
    assert canary.exists()
    canary.unlink()
    model = folder_with(tmp_path, "vocab.pickle", data)
    out = tmp_path / "out"
    proc = run_cli("convert", str(model), "--out", str(out), timeout=600)
    assert proc.returncode == 1 and "it is a pickle" in proc.stderr, proc.stderr
    assert not out.exists() and not canary.exists()
    proc = run_cli("scan", str(model), timeout=600)
    assert proc.returncode == 1, proc.stdout
    assert "vocab.pickle" in proc.stdout and "not named like a weight file" in proc.stdout
    assert not canary.exists()


def test_an_object_array_in_any_zip_is_not_carried_over(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        with zf.open("vectors.npy", "w") as f:
            np.save(f, np.array([Payload(canary)], dtype=object), allow_pickle=True)
        zf.writestr("README", "vectors")
    model = folder_with(tmp_path, "embeddings.npz", buf.getvalue())
    path = str(model / "embeddings.npz")
    proc = run_py(f"import numpy as np; np.load({path!r}, allow_pickle=True)['vectors']")
    assert canary.exists(), proc.stderr  # live, in a process without sandboxload
    canary.unlink()
    proc = run_cli("convert", str(model), "--out", str(tmp_path / "out"), timeout=600)
    assert proc.returncode == 1 and "vectors.npy" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() and not canary.exists()


def npz_member_flag(flag_at: int, value: int) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.ones(3))
    data = bytearray(buf.getvalue())
    data[data.find(b"PK\x01\x02") + flag_at] = value
    data[data.find(b"PK\x03\x04") + flag_at - 2] = value
    return bytes(data)


@pytest.mark.parametrize(
    ("what", "data"),
    [("encrypted", npz_member_flag(8, 1)), ("compression 99", npz_member_flag(10, 99))],
)
def test_an_npz_that_cannot_be_checked_is_refused_typed(
    tmp_path: Path, what: str, data: bytes
) -> None:
    model = folder_with(tmp_path, "extra.npz", data)
    proc = run_cli("convert", str(model), "--out", str(tmp_path / "out"), timeout=600)
    assert proc.returncode == 1, (what, proc.stderr)
    assert "cannot be checked for pickled NumPy arrays" in proc.stderr and "Traceback" not in (
        proc.stderr
    ), (what, proc.stderr)


def test_a_zip64_offset_past_any_file_is_a_typed_error(tmp_path: Path) -> None:
    """An end record's zip64 locator pointing at 2**64 - 1 raised OverflowError in the
    parent's sniff, at load time too."""
    eocd = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, 2**32 - 1, 2**32 - 1, 0)
    loc = b"PK\x06\x07" + struct.pack("<IQI", 0, 2**64 - 1, 1)
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100 + loc + eocd)
    with pytest.raises(sandboxload.SandboxLoadError):
        sandboxload.load(path)


# --- one file, two archives ---------------------------------------------------------------


def _records(obj: object) -> list[tuple[str, bytes]]:
    b = io.BytesIO()
    torch.save(obj, b)
    zf = zipfile.ZipFile(io.BytesIO(b.getvalue()))
    return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _stored(records: list[tuple[str, bytes]], base: int) -> tuple[bytes, bytes]:
    local = central = b""
    for name, data in records:
        n, crc, at = name.encode(), zlib.crc32(data), base + len(local)
        local += b"PK\x03\x04" + struct.pack(
            "<5H3I2H", 20, 0, 0, 0, 0, crc, len(data), len(data), len(n), 0
        )
        local += n + data
        central += b"PK\x01\x02" + struct.pack(
            "<6H3I5H2I", 20, 20, 0, 0, 0, 0, crc, len(data), len(data), len(n), 0, 0, 0, 0, 0, at
        )
        central += n
    return local, central


def two_archives(for_zip64: object, for_eocd: object, marker_count: bool) -> bytes:
    """The zip64 end record names one archive's directory, the 32-bit one another's."""
    a, b = _records(for_zip64), _records(for_eocd)
    assert len(a) == len(b)
    loc_a, cd_a = _stored(a, 0)
    loc_b, cd_b = _stored(b, len(loc_a))
    body = loc_a + loc_b
    off_a = len(body)
    body += cd_a
    off_b = len(body)
    body += cd_b
    off64 = len(body)
    body += b"PK\x06\x06" + struct.pack(
        "<QHHIIQQQQ", 44, 45, 45, 0, 0, len(a), len(a), len(cd_a), off_a
    )
    body += b"PK\x06\x07" + struct.pack("<IQI", 0, off64, 1)
    count = 0xFFFF if marker_count else len(b)
    body += b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, count, count, len(cd_b), off_b, 0)
    return body


@pytest.mark.parametrize("marker_count", [True, False])
def test_a_zip_with_two_directories_is_refused(tmp_path: Path, marker_count: bool) -> None:
    """torch (miniz) reads the zip64 record whenever its locator is there; sandboxload read
    the 32-bit one unless it held a marker: scan vouched for zeros, torch loaded sevens."""
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(
        two_archives({"w": torch.full((2,), 7.0)}, {"w": torch.zeros(2)}, marker_count)
    )
    code = f"import torch; print(torch.load({str(path)!r}, weights_only=True)['w'].tolist())"
    proc = run_py(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "[7.0, 7.0]", proc.stderr  # live
    with pytest.raises(CorruptCheckpointError, match="two end records"):
        sandboxload.load(path)
    proc = run_cli("scan", str(path), timeout=600)
    assert proc.returncode == 1 and "two end records" in proc.stdout, proc.stdout


def test_a_payload_archive_behind_a_data_archive_is_refused(tmp_path: Path) -> None:
    """The same trick with a payload where torch reads (``weights_only=False``, as dcp reads
    non-tensor values and older code reads everything)."""
    canary = tmp_path / "CANARY"
    path = tmp_path / "record.pt"
    data = two_archives({"x": Payload(canary)}, {"x": "hello"}, marker_count=True)
    path.write_bytes(data)
    proc = run_py(f"import torch; torch.load({str(path)!r}, weights_only=False)")
    assert proc.returncode == 0 and canary.exists(), proc.stderr  # live
    canary.unlink()
    with pytest.raises(CorruptCheckpointError):
        sandboxload.load(path)
    assert not canary.exists()
    assert os.path.getsize(path) == len(data)


# --- second review: what the C unpickler reads that pickletools does not ------------------

ACTS = b"cos\nsystem\n(S'touch {canary}'\ntR."


@pytest.mark.parametrize(
    "prefix", [b"I0x1\n0", b"I1\x00junk\n0", b"L0x1\n0", b"F1\x00junk\n0", b"I0o7\n0", b"I010\n0"]
)
def test_numbers_as_the_c_unpickler_reads_them(tmp_path: Path, prefix: bytes) -> None:
    """``_pickle.c`` reads INT/LONG with base 0 and up to a NUL; pickletools' int() does not,
    and a probe that stopped there passed the payload behind it."""
    canary = tmp_path / "CANARY"
    data = prefix + ACTS.replace(b"{canary}", str(canary).encode())
    pickle.loads(data)  # live
    assert canary.exists()
    assert pickled(data, whole=True)


def safetensors_pickle(canary: Path) -> bytes:
    """A valid safetensors file whose bytes are also a pickle: the header length's first byte
    is SHORT_BINBYTES, whose skips run through a metadata string; the tensor is the payload
    (the construction of the second review)."""
    body = ACTS.replace(b"{canary}", str(canary).encode())
    n = len(body)
    tensor = json.dumps(
        {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}, separators=(",", ":")
    )
    prefix = '{"w":' + tensor + ',"__metadata__":{"x":"'
    start = 8 + len(prefix)
    size = 0x43 + 256 * (start - 2)
    rest = 8 + size - start
    k = (rest - 2 - 60) // 128
    last = rest - 2 - 128 * k
    assert 35 <= last <= 126 and chr(last) not in '"\\'
    content = ("C~" + "a" * 126) * k + "C" + chr(last)
    header = (prefix + content + '"}}' + " " * (last - 3)).encode()
    assert len(header) == size
    return struct.pack("<Q", size) + header + body


def test_a_safetensors_file_that_is_also_a_pickle(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    canary = tmp_path / "CANARY"
    data = safetensors_pickle(canary)
    model = folder_with(tmp_path, "training_args.bin", data)
    (model / "optimizer_state.cache").write_bytes(data)
    assert load_file(str(model / "training_args.bin"))["w"].numel() > 0  # safetensors reads it
    path = str(model / "training_args.bin")
    proc = run_py(f"import torch; torch.load({path!r}, weights_only=False)")
    assert canary.exists(), proc.stderr  # live: torch's legacy reader ran the pickle
    canary.unlink()
    proc = run_cli("scan", str(model), timeout=600)
    assert proc.returncode == 1, proc.stdout
    rows = [r for r in proc.stdout.splitlines() if r.startswith("REFUSED")]
    assert len(rows) == 2 and all("reads as safetensors, but it is a pickle" in r for r in rows)
    proc = run_cli("convert", str(model), "--out", str(tmp_path / "out"), timeout=600)
    assert proc.returncode == 1 and "it is a pickle" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() and not canary.exists()


def test_record_names_that_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    """torch's reader (miniz) finds records case-blind: a payload ``DATA.pkl`` beside a
    harmless ``data.pkl`` was what plain torch ran while sandboxload read the other."""
    canary = tmp_path / "CANARY"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name in src.namelist():
            z.writestr(name, src.read(name))
            if name.endswith("/data.pkl"):
                z.writestr(
                    name[: -len("data.pkl")] + "DATA.pkl", pickle.dumps({"w": Payload(canary)}, 2)
                )
    proc = run_py(f"import torch; torch.load({str(path)!r}, weights_only=False)")
    assert canary.exists(), proc.stderr  # live
    canary.unlink()
    with pytest.raises(CorruptCheckpointError, match="ignoring case"):
        sandboxload.load(path)
    proc = run_cli("scan", str(path), timeout=600)
    assert proc.returncode == 1 and "ignoring case" in proc.stdout, proc.stdout
    assert not canary.exists()


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8,
        b"Pretrained on Wikipedia.\nMore text.\n",
        b"License: MIT\n",
        pickle.dumps({"a": [1, 2.5, "x"]}, 0),  # plain data: nothing acts
    ],
)
def test_what_the_probe_does_not_call_a_pickle(data: bytes) -> None:
    assert pickled(data, whole=True) is None


def test_a_second_pickle_in_the_same_file_is_walked_too(tmp_path: Path) -> None:
    """A reader may call ``load`` again on the same file (torch's legacy reader reads four
    pickles in a row): a plain first pickle does not end the walk."""
    canary = tmp_path / "CANARY"
    data = pickle.dumps(1, 2) + pickle.dumps(Payload(canary), 2)
    f = io.BytesIO(data)
    pickle.load(f)
    pickle.load(f)  # live
    assert canary.exists()
    assert pickled(data, whole=True)


def test_the_pickle_after_a_large_frame_is_walked_too(tmp_path: Path) -> None:
    """The C unpickler reads a frame of 128 KiB or more whole: after a STOP inside it, the
    next ``load`` -- torch's legacy reader makes four -- starts at the frame's end, past bytes
    that are no opcodes. (Found by the third review: scan and convert passed it.)"""
    canary = tmp_path / "CANARY"
    magic = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
    inner = magic + b"\xff" * 140_000
    data = b"\x95" + struct.pack("<Q", len(inner)) + inner + b"M\xe9\x03.}."
    data += ACTS.replace(b"{canary}", str(canary).encode())
    model = folder_with(tmp_path, "training_state", data)
    path = str(model / "training_state")
    proc = run_py(
        f"import torch\ntry: torch.load({path!r}, weights_only=False)\nexcept Exception: pass"
    )
    assert canary.exists(), proc.stderr  # live
    canary.unlink()
    assert pickled(data, whole=True)
    assert pickled(data[: 64 << 10], whole=False)  # the first read of a large file
    proc = run_cli("convert", str(model), "--out", str(tmp_path / "out"), timeout=600)
    assert proc.returncode == 1 and "it is a pickle" in proc.stderr, proc.stderr
    proc = run_cli("scan", str(model), timeout=600)
    assert proc.returncode == 1 and "training_state" in proc.stdout, proc.stdout
    assert not canary.exists()
