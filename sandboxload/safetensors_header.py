"""The safetensors header check: strict validation of attacker-controlled JSON and offsets.

The header is attacker input, so it is checked here before safetensors sees the file: a size
cap, strict JSON (no duplicate keys, no NaN), known dtypes, shapes of non-negative ints with
checked arithmetic, data offsets that tile the data section exactly (no gaps, no overlaps,
nothing past the end). The checked file is then handed to safetensors through
``/proc/self/fd/N``, which reopens the very inode that was checked; safetensors maps it
privately and returns tensors that are views of that mapping (zero copy).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from .errors import InvalidSafetensorsError
from .fileid import LRU, identity
from .wording import count

HEADER_CAP = 100 * 1024 * 1024  # safetensors' own limit
# dtype -> bits per element (sub-byte dtypes pack several elements per byte).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
MAX_ELEMENTS = 1 << 62


@dataclass(frozen=True)
class Header:
    """A validated header: tensor name -> (dtype, shape, begin, end) relative to the data."""

    header_len: int
    data_len: int
    tensors: dict[str, tuple[str, tuple[int, ...], int, int]]
    metadata: dict[str, str]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_header(prefix: bytes, size: int, name: str) -> Header:
    """Validate a header given the file's first ``8 + N`` bytes and its total size."""

    def bad(detail: str) -> InvalidSafetensorsError:
        return InvalidSafetensorsError(name, detail)

    if size < 8 or len(prefix) < 8:
        raise bad("shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", prefix)
    if n > HEADER_CAP:
        raise bad(f"header of {n} bytes exceeds the {HEADER_CAP}-byte cap")
    if 8 + n > size or len(prefix) < 8 + n:
        raise bad("header runs past the end of the file")
    text = prefix[8 : 8 + n]
    try:
        raw = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"header is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise bad("header is not a JSON object")
    # Duplicate keys: the C parser keeps the last one silently; every entry has exactly one
    # "data_offsets" key, so any duplicated entry shows up as a surplus occurrence (a tensor
    # *named* "data_offsets" only makes this stricter). A Python object_pairs_hook cost more
    # than the whole zero-copy load of a 400 MB file.
    entries = len(raw) - ("__metadata__" in raw)
    if text.count(b'"data_offsets"') != entries:
        raise bad("duplicate keys in the header")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise bad("__metadata__ must map strings to strings")
    data_len = size - 8 - n
    tensors = {key: _entry(key, info, bad) for key, info in raw.items()}
    # The data section must be tiled exactly: no gaps, no overlaps, nothing left over.
    pos = 0
    for key, (_, _, begin, end) in sorted(tensors.items(), key=lambda kv: kv[1][2:]):
        if begin != pos:
            raise bad(f"tensor {key!r} starts at {begin}, expected {pos} (gap or overlap)")
        pos = end
    if pos != data_len:
        raise bad(f"tensors cover {count(pos, 'byte')} of a {data_len}-byte data section")
    return Header(n, data_len, tensors, metadata)


_KEYS = frozenset({"dtype", "shape", "data_offsets"})


def _entry(key: str, info: Any, bad: Any) -> tuple[str, tuple[int, ...], int, int]:
    if type(info) is not dict or info.keys() != _KEYS:
        raise bad(f"tensor {key!r}: entry must have exactly dtype, shape, data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    bits = DTYPE_BITS.get(dtype) if type(dtype) is str else None
    if bits is None:
        raise bad(f"tensor {key!r}: unknown dtype {dtype!r}")
    if type(shape) is not list or len(shape) > 64:
        raise bad(f"tensor {key!r}: shape must be a list of non-negative ints")
    numel = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise bad(f"tensor {key!r}: shape must be a list of non-negative ints")
        numel *= d
    if type(offsets) is not list or len(offsets) != 2:
        raise bad(f"tensor {key!r}: data_offsets must be [begin, end] with begin <= end")
    begin, end = offsets
    if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
        raise bad(f"tensor {key!r}: data_offsets must be [begin, end] with begin <= end")
    total = numel * bits
    if numel > MAX_ELEMENTS or total % 8:
        raise bad(f"tensor {key!r}: {count(numel, 'element')} of {dtype} is not a whole byte count")
    if end - begin != total // 8:
        raise bad(
            f"tensor {key!r}: holds {count(end - begin, 'byte')}, its dtype and shape need "
            f"{total // 8}"
        )
    return dtype, tuple(shape), begin, end


# Validated headers of unchanged files, bounded by bytes (a header may be 100 MB): parsed, a
# header takes about 4.4x its JSON, weighed here as 5x.
_checked: LRU[Header] = LRU(64, max_bytes=32 << 20, weigh=lambda h: 5 * h.header_len)


def read_header(fd: int, name: str) -> Header:
    """Validate the header of the file open on ``fd`` (read with pread: no offset moves).

    A file already validated, and unchanged since, is not parsed again."""
    key = identity(fd)
    cached = _checked.get(key) if key is not None else None
    if cached is not None:
        return cached
    header = _read_header(fd, name)
    if key is not None:
        _checked.put(key, header)
    return header


def _read_header(fd: int, name: str) -> Header:
    size = os.fstat(fd).st_size
    head = os.pread(fd, 8, 0)
    if len(head) < 8:
        raise InvalidSafetensorsError(name, "shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > HEADER_CAP or 8 + n > size:
        return parse_header(head, size, name)  # raises with the precise reason
    return parse_header(head + os.pread(fd, n, 8), size, name)
