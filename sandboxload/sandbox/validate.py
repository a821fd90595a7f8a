"""Checks for fields of the child's description: every value is hostile until checked."""

from __future__ import annotations

from typing import Any

from .protocol import NODE_FIELDS

MAX_DIMS = 64
MAX_ELEMENTS = 1 << 62


class Invalid(Exception):
    """A description field failed validation (reported as CorruptCheckpointError)."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Invalid(what)


def int_(value: Any, what: str, lo: int = 0, hi: int = MAX_ELEMENTS) -> int:
    check(type(value) is int and lo <= value <= hi, f"{what} out of range")
    return value


def ints(value: Any, what: str) -> list[int]:
    check(isinstance(value, list) and len(value) <= MAX_DIMS, f"{what} must be a short list")
    return [int_(v, what) for v in value]


def str_(value: Any, what: str, limit: int = 256) -> str:
    check(isinstance(value, str) and len(value) <= limit, f"{what} must be a short string")
    return value


def float_(value: Any, what: str) -> float:
    if isinstance(value, str):
        check(value in ("nan", "inf", "-inf"), what)
        return float(value)
    check(type(value) in (int, float), what)
    return float(value)


def node_fields(node: Any) -> tuple[str, list[Any]]:
    """A node's kind and fields, checked against the contract's arity for that kind."""
    check(isinstance(node, list) and node and isinstance(node[0], str), "node")
    kind = node[0]
    fields = NODE_FIELDS.get(kind)
    check(fields is not None, f"unknown node kind {kind!r}")
    check(len(node) == 1 + len(fields), f"{kind} node has the wrong number of fields")
    return kind, node[1:]
