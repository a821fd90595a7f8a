"""Would ``pickle.load`` of these bytes do anything? Decided without unpickling.

A file carried over by ``convert`` or passed over by ``scan`` must not be a pickle that a
consumer's ``pickle.load`` would act on. Its first byte is no answer: ``pickle.load`` takes a
binary stream without the ``PROTO`` header (``pickle.dumps(x, 4)[2:]`` starts with ``FRAME``),
and a protocol-0 stream is text. So the opcodes are walked as ``pickle.load`` would run them
(``pickletools`` decodes them; nothing is imported or called), keeping the stack's depth and
marks as the C unpickler does, until the first thing it would stop at. The stream is a
pickle if, before that, it imports a global or builds an object (anything that can run
code), or reaches ``STOP`` holding a value. A stream still valid where the probe's bounded
read ends counts as a pickle too: the code may come later.

Text rarely walks far: ``[PAD]``, ``{"``, ``# `` are not opcodes, ``I am`` is not an int,
and a ``GLOBAL`` must name importable-looking identifiers, as ``find_class`` needs.
"""

from __future__ import annotations

import io
import pickletools
import re

LIMIT = 1 << 20  # bytes walked at most
# Opcodes through which pickle.load imports a name or calls something.
ACTS = frozenset(
    {
        "GLOBAL",
        "STACK_GLOBAL",
        "INST",
        "OBJ",
        "REDUCE",
        "NEWOBJ",
        "NEWOBJ_EX",
        "BUILD",
        "EXT1",
        "EXT2",
        "EXT4",
        "PERSID",
        "BINPERSID",
    }
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# pickletools' words for "the bytes ended here" (an argument or a line cut short).
_ENDED = ("remain", "exhausted", "no newline found", "not enough data")


class _Stop(Exception):
    """pickle.load would raise here, before doing anything more."""


def _names_ok(arg: object) -> bool:
    parts = str(arg).split(" ")
    return len(parts) == 2 and all(_NAME.fullmatch(p) for p in parts)


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


def pickled(data: bytes, whole: bool) -> str | None:
    """Why ``data`` (the file's first bytes; ``whole``: all of it) is a pickle, or None."""
    stack = [0]
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            if op.name == "PROTO" and not (isinstance(arg, int) and 0 <= arg <= 5):
                return None  # an unsupported protocol: pickle.load stops at once
            if op.name in ("GLOBAL", "INST") and not _names_ok(arg):
                return None  # find_class cannot import it
            if op.name == "STOP":  # returns the value on top, above the last mark
                return "it is a pickle" if stack[-1] else None
            _step(stack, op)
            if op.name in ACTS:
                return f"it is a pickle ({op.name} at byte {pos})"
    except _Stop:
        return None
    except ValueError as exc:
        if not whole and any(w in str(exc) for w in _ENDED):
            return f"it is a pickle stream for at least its first {len(data)} bytes"
        return None
    return None


def pickled_file(f: io.BufferedIOBase | io.RawIOBase | io.BufferedReader, size: int) -> str | None:
    """:func:`pickled` of the open binary file ``f`` (read from its start, then rewound)."""
    f.seek(0)
    data = f.read(min(size, LIMIT))
    f.seek(0)
    return pickled(data or b"", whole=size <= LIMIT)
