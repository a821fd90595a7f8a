"""A scan's rows as text or JSON lines, its summary line and its exit status.

Exit status: 0 every row ok, 1 something refused or unsafe, 2 something could not be read
(an unreadable file is a gate that did not check it: it must not pass).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from ..wording import count, shown
from .check import ERROR, OK, REFUSED, UNSAFE, Row
from .units import Unit

VERDICTS = (OK, REFUSED, UNSAFE, ERROR)
_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8(value: Any) -> Any:
    """``value`` (a string, or a list or dict of them) as valid Unicode for JSON: a file name
    that is not UTF-8 holds lone surrogates (Python's ``surrogateescape``: byte 0xff is
    U+DCFF), which strict JSON readers reject; each is written as its escape, ``\\udcff``, as
    :func:`sandboxload.wording.shown` writes it in text."""
    if isinstance(value, str):
        return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    if isinstance(value, list):
        return [utf8(v) for v in value]
    if isinstance(value, dict):
        return {k: utf8(v) for k, v in value.items()}
    return value


def text_line(row: Row) -> str:
    """One row (and a line per other path of its blob); names from the files escaped, so a
    name cannot forge a row or the summary, nor send escape sequences."""
    line = f"{row.verdict.upper():<8} {row.format:<12} {shown(row.file)}: {shown(row.detail)}"
    return line + "".join(f"\n{'':<8} {'':<12} (same blob) {shown(p)}" for p in row.also)


def json_line(row: Row) -> str:
    return json.dumps(utf8(row.as_dict()), sort_keys=True)


def summary(units: list[Unit], rows: list[Row]) -> str:
    """``scanned 1020 files (3.1 GB): 1017 ok, 2 refused, 1 error``."""
    worst: dict[str, int] = {}  # a file's verdict is its worst row's; no row at all: ok
    for r in rows:
        worst[r.file] = max(worst.get(r.file, 0), VERDICTS.index(r.verdict))
    counts = Counter(VERDICTS[w] for w in worst.values())
    counts[OK] += max(0, len(units) - len(worst))
    size = sum(u.size for u in units)
    parts = [f"{counts[v]} {v}" for v in VERDICTS if counts[v] or v == OK]
    return f"scanned {count(len(units), 'file')} ({_size(size)}): {', '.join(parts)}"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError


def exit_status(rows: list[Row]) -> int:
    verdicts = {r.verdict for r in rows}
    if ERROR in verdicts:
        return 2
    return 1 if verdicts & {REFUSED, UNSAFE} else 0
