"""Counts and articles in messages: "1 file", "2 files", "an int"."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, singular for exactly one."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def a(word: str) -> str:
    """``word`` after its indefinite article."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def shown(text: str) -> str:
    """``text`` for a terminal or a log: a name from a hostile file cannot forge a line or
    send escape sequences (control characters are written as escapes)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
