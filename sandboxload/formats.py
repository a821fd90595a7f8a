"""Every format name, and what a weight file is, decided from its bytes (never its name).

The branch taken mirrors the one ``torch.load`` itself would take (zip magic first, then the
legacy pickle stream), so a file cannot be classified as one thing here and parsed as another
there. The sniffed name is what the audit log, ``scan`` and error messages print; the tables
below map it to the name ``SANDBOXLOAD_FORMATS`` uses and to the sandbox reader that parses it.
"""

from __future__ import annotations

import os
import struct
import zipfile
from typing import IO, Final

from .sandbox.protocol import READ_LEGACY, READ_TAR, READ_ZIP

SAFETENSORS: Final = "safetensors"
TORCH_ZIP: Final = "torch-zip"
TORCH_LEGACY: Final = "torch-legacy"
TORCH_TAR: Final = "torch-tar"
TORCHSCRIPT: Final = "torchscript"
NUMPY: Final = "numpy"
PICKLE: Final = "pickle"
ZIP: Final = "zip"
UNKNOWN: Final = "unknown"

# Every sniffed name, with what it means (the docs' format table is checked against this).
SNIFFED: Final = {
    SAFETENSORS: "a safetensors file (JSON header + raw tensor data; holds no code)",
    TORCH_ZIP: "torch.save's zip format (data.pkl + one record per storage)",
    TORCH_LEGACY: "torch.save's legacy format (stacked pickles after torch's magic number)",
    TORCH_TAR: "torch's oldest format, a tar of pickles",
    TORCHSCRIPT: "a TorchScript archive (torch.jit.save): carries code",
    NUMPY: "a NumPy .npy file, or a .npz of them",
    PICKLE: "a bare pickle stream without torch's magic number",
    ZIP: "a zip that is neither a torch checkpoint nor TorchScript nor .npz",
    UNKNOWN: "anything else (torch.load would try it as a legacy stream)",
}

# Names SANDBOXLOAD_FORMATS accepts.
POLICY_FORMATS: Final = (SAFETENSORS, TORCH_ZIP, TORCH_LEGACY, NUMPY)
# Sniffed name -> its name in SANDBOXLOAD_FORMATS: every pickle stream torch would read as a
# legacy checkpoint counts as torch-legacy. Absent (TorchScript, other zips): never allowed by
# name, so any allowlist refuses them.
POLICY_NAME: Final = {
    SAFETENSORS: SAFETENSORS,
    TORCH_ZIP: TORCH_ZIP,
    TORCH_LEGACY: TORCH_LEGACY,
    TORCH_TAR: TORCH_LEGACY,
    PICKLE: TORCH_LEGACY,
    UNKNOWN: TORCH_LEGACY,
    NUMPY: NUMPY,
}
# Sniffed name -> the sandbox reader that parses it. A raw pickle or unknown bytes is read as
# a legacy stream, as torch.load would, and fails its magic-number check safely.
READER: Final = {
    TORCH_ZIP: READ_ZIP,
    TORCH_LEGACY: READ_LEGACY,
    PICKLE: READ_LEGACY,
    UNKNOWN: READ_LEGACY,
    TORCH_TAR: READ_TAR,
}
# Formats whose loading means running a pickle stream.
PICKLE_BASED: Final = frozenset(
    {TORCH_ZIP, TORCH_LEGACY, TORCH_TAR, TORCHSCRIPT, PICKLE, ZIP, UNKNOWN}
)

_ZIP_MAGIC = b"PK\x03\x04"
_NUMPY_MAGIC = b"\x93NUMPY"
# torch's legacy MAGIC_NUMBER 0x1950a86a20f9469cfc6c pickled as LONG1.
_TORCH_LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
# Opcodes that can open a protocol 0/1 pickle (the text protocols have no PROTO header).
_PICKLE_TEXT_FIRST = frozenset(b"(]})NIFLSVcdlptTUXJKMGBhjgqrae.")
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
HEAD_BYTES: Final = 512


def sniff_bytes(head: bytes, size: int) -> str:
    """Classify from the first :data:`HEAD_BYTES` bytes and the total size (zip members aside)."""
    if head.startswith(_ZIP_MAGIC):
        return ZIP
    if head.startswith(_NUMPY_MAGIC):
        return NUMPY
    if len(head) >= 9:
        (n,) = struct.unpack_from("<Q", head)
        if 2 <= n <= min(size - 8, _SAFETENSORS_MAX_HEADER) and head[8:9] == b"{":
            return SAFETENSORS
    if len(head) >= 262 and head[257:262] == b"ustar":
        return TORCH_TAR
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return TORCH_LEGACY if _TORCH_LEGACY_MAGIC in head[:32] else PICKLE
    if head[:1] and head[0] in _PICKLE_TEXT_FIRST:
        return PICKLE
    return UNKNOWN


def classify_zip(names: list[str]) -> str:
    """torch zip, TorchScript or another zip, from the member names (as torch decides)."""
    if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names):
        return TORCHSCRIPT
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return TORCH_ZIP
    if names and all(n.endswith(".npy") for n in names):
        return NUMPY
    return ZIP


def _fast_names(f: IO[bytes], size: int) -> list[str] | None:
    """The names straight from the central directory, where ``f`` has a descriptor."""
    from . import zipnames

    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):  # BytesIO and friends
        return None
    try:
        return zipnames.names(fd, size)
    except (OSError, struct.error, UnicodeError, OverflowError):
        return None


def sniff(f: IO[bytes]) -> str:
    """Classify a seekable binary file; its position is restored."""
    pos = f.tell()
    try:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        head = f.read(HEAD_BYTES)
        fmt = sniff_bytes(head, size)
        if fmt == ZIP:
            found = _fast_names(f, size)
            if found is not None:
                return classify_zip(found)
            f.seek(0)
            try:
                with zipfile.ZipFile(f) as zf:
                    fmt = classify_zip(zf.namelist())
            except Exception:  # zipfile raises many types on hostile bytes (found by fuzzing)
                fmt = UNKNOWN
        return fmt
    finally:
        f.seek(pos)


def sniff_path(path: str) -> str:
    from .fileid import open_regular

    with os.fdopen(open_regular(path), "rb") as f:
        return sniff(f)
