"""Progress bars for the long-running subcommands: on a terminal only, silent otherwise.

A CI log or a pipe gets no bar (and no carriage returns); a person at a terminal sees one on
stderr. ``tqdm`` is the bar; without it (it is a dependency, but a trimmed image may lack it)
everything still runs, silently.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def close(self) -> Any: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def shown() -> bool:
    """Whether a bar would be drawn: stderr is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def bar(total: int | None, desc: str, unit: str = "file") -> Bar:
    """A bar of ``total`` ``unit``s (``"B"``: bytes, scaled); a silent one off a terminal."""
    if not shown():
        return _Silent()
    try:
        from tqdm import tqdm
    except ImportError:
        return _Silent()
    scaled = unit == "B"
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=scaled,
        unit_divisor=1024 if scaled else 1000,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


def each(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "file"
) -> Iterator[T]:
    """Iterate ``items``, ticking a bar per item on a terminal."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    b = bar(total, desc, unit)
    try:
        for item in items:
            yield item
            b.update(1)
    finally:
        b.close()
