"""Would ``pickle.load`` of these bytes import or call anything? Decided without unpickling.

A file carried over by ``convert`` or passed over by ``scan`` must not be a pickle that a
consumer's ``pickle.load`` (or ``torch.load``'s legacy reader) would act on. Its first byte
is no answer: the unpickler takes a binary stream without the ``PROTO`` header
(``pickle.dumps(x, 4)[2:]`` starts with ``FRAME``), and a protocol-0 stream is text. So the
opcodes are walked as CPython's C unpickler runs them -- each argument decoded as it decodes
it (``I0x1``, ``F1\\0junk``: base-0 numbers ending at a NUL are numbers there), the stack's
depth and marks kept -- until the first thing at which it would stop. The stream is a pickle
if, before that, it imports a global or calls or builds anything; a stream still valid
where the bounded read ends counts as one too (what acts may come later). A persistent id
is walked past (torch's legacy reader resolves them and reads on). A pickle of plain data
(values only) acts on nothing and is not reported.

Text rarely walks far: ``[PAD]``, ``{"``, ``# `` are not opcodes, ``I am`` is not an int,
and a ``GLOBAL`` must name identifiers, as ``find_class`` needs.
"""

from __future__ import annotations

import io
import pickletools
import re
from collections.abc import Iterator
from typing import Any

LIMIT = 1 << 20  # bytes walked at most
# Opcodes through which pickle.load imports a name or calls something.
ACTS = frozenset(
    {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}
    | {"EXT1", "EXT2", "EXT4"}
)
# What C's strtol(s, &end, 0) takes whole (leading space, a sign, 0x / 0 octal / decimal).
_C_INT = re.compile(rb"[ \t\n\v\f\r]*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


class _Stop(Exception):
    """pickle.load would raise here, before doing anything more."""


class _Ended(Exception):
    """The bytes ended before the stream did."""


def _line(f: io.BytesIO) -> bytes:
    line = f.readline()
    if not line.endswith(b"\n"):
        raise _Ended
    return line[:-1]


def _number(name: str, f: io.BytesIO) -> object:
    """INT, LONG and FLOAT as ``_pickle.c`` decodes them: the text up to a NUL, base 0."""
    text = _line(f).split(b"\0", 1)[0]
    if name == "LONG" and text.endswith(b"L"):
        text = text[:-1]
    try:
        if name == "FLOAT":
            return float(text)
        if _C_INT.fullmatch(text):
            return 0
        return int(text, 0)
    except ValueError:
        raise _Stop from None


def _ops(data: bytes, start: int) -> Iterator[tuple[pickletools.OpcodeInfo, Any, int, int]]:
    """Each opcode from ``start``: (opcode, argument, where it starts, where it ends)."""
    f = io.BytesIO(data)
    f.seek(start)
    while True:
        pos = f.tell()
        code = f.read(1)
        if not code:
            raise _Ended
        op = pickletools.code2op.get(code.decode("latin-1"))
        if op is None:
            raise _Stop  # "invalid load key"
        if op.name in ("INT", "LONG", "FLOAT"):
            arg = _number(op.name, f)
        elif op.arg is None:
            arg = None
        else:
            try:
                arg = op.arg.reader(f)
            except ValueError as exc:
                text = str(exc)
                if any(w in text for w in ("remain", "no newline found", "not enough data")):
                    raise _Ended from None
                raise _Stop from None
        yield op, arg, pos, f.tell()


def _names_ok(arg: object) -> bool:
    parts = str(arg).split(" ")
    return len(parts) == 2 and all(
        all(piece.isidentifier() for piece in part.split(".")) for part in parts
    )


def _step(stack: list[int], op: pickletools.OpcodeInfo) -> None:
    """Apply ``op`` to a stack of item counts between marks (``stack[-1]`` above the last)."""
    before = op.stack_before
    if op.name == "MARK":
        stack.append(0)
        return
    if op.name == "POP":
        if stack[-1]:
            stack[-1] -= 1
        elif len(stack) > 1:
            stack.pop()  # POP with nothing above the mark pops the mark
        else:
            raise _Stop
        return
    if pickletools.markobject in before:
        if len(stack) < 2:
            raise _Stop  # no mark to pop to
        sliced = stack.pop()
        if before.index(pickletools.markobject) + 2 < len(before) and sliced < 1:
            raise _Stop  # OBJ: a class must follow the mark
        need = before.index(pickletools.markobject)
    else:
        need = len(before)
    if stack[-1] < need:
        raise _Stop  # stack underflow
    stack[-1] += len(op.stack_after) - need


MAX_STARTS = 64  # pickles walked from other starts (frame ends) before giving up: a pickle


def pickled(data: bytes, whole: bool) -> str | None:
    """Why ``data`` (the file's first bytes; ``whole``: all of it) is a pickle that acts, or
    None. Pickles that follow one another are walked in turn: a reader may call ``load``
    again on the same file (torch's legacy reader reads four). After a STOP inside a FRAME,
    the next ``load`` starts right after it or at the frame's end (the C unpickler reads a
    large frame whole): both are walked."""
    starts, seen = [0], {0}
    while starts:
        if len(seen) > MAX_STARTS:
            return "it is a pickle stream of many framed pickles"
        why = _walk(data, starts.pop(), whole, starts, seen)
        if why is not None:
            return why
    return None


def _walk(data: bytes, start: int, whole: bool, starts: list[int], seen: set[int]) -> str | None:
    stack, frame_end = [0], 0
    try:
        for op, arg, pos, end in _ops(data, start):
            if op.name == "PROTO" and not (isinstance(arg, int) and 0 <= arg <= 5):
                return None  # an unsupported protocol: pickle.load stops at once
            if op.name in ("GLOBAL", "INST") and not _names_ok(arg):
                return None  # find_class cannot import it
            if op.name == "FRAME" and isinstance(arg, int):
                frame_end = end + arg
            if op.name == "STOP":  # it returns the value on top, above the last mark
                if stack[-1] < 1:
                    return None
                if frame_end > end and frame_end not in seen:
                    seen.add(frame_end)
                    starts.append(frame_end)
                stack = [0]
                continue
            _step(stack, op)
            if op.name in ACTS:
                return f"it is a pickle ({op.name} at byte {pos})"
    except _Stop:
        return None
    except _Ended:  # what was read ended: the rest of the file may act
        if not whole:
            return f"it is a pickle stream for at least its first {len(data)} bytes"
    return None


FIRST = 64 << 10  # read first; the rest up to LIMIT only for a stream still valid there


def pickled_file(f: io.BufferedIOBase | io.RawIOBase | io.BufferedReader, size: int) -> str | None:
    """:func:`pickled` of the open binary file ``f`` (read from its start, then rewound)."""
    why = None
    for n in (FIRST, LIMIT):
        f.seek(0)
        data = f.read(min(size, n)) or b""
        why = pickled(data, whole=size <= n)
        if size <= n or why is None or not why.startswith("it is a pickle stream"):
            break
    f.seek(0)
    return why


def pickled_fd(fd: int) -> str | None:
    """:func:`pickled_file` of the regular file open on ``fd`` (its offset is not used)."""
    import os

    with os.fdopen(os.dup(fd), "rb") as f:
        return pickled_file(f, os.fstat(fd).st_size)
