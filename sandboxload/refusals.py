"""Refusals that no library can swallow: recorded where they happen, re-raised at the edge.

Libraries wrap the steps of a load in ``except OSError`` / ``except ValueError`` /
``except Exception`` and carry on (transformers' AutoProcessor tries a tokenizer, then an
image processor, then a feature extractor; sentence-transformers falls back to another
import). A refusal raised inside such a step would vanish, and the load would look normal.
So every refusal raised through :func:`refuse` is also recorded in the current context, and
each user-facing entry point (``from_pretrained``, ``pipeline``, ``SentenceTransformer(...)``,
run inside a :func:`scope` by ``patches._common.entry_point``) re-raises the first refusal
recorded during its call when it returns -- or when it fails with some other error -- so the
refusal always reaches the caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NoReturn

from .errors import SandboxLoadError

# Refusals raised in this context (thread / task) since the outermost scope began.
_recorded: ContextVar[list[SandboxLoadError] | None] = ContextVar(
    "sandboxload_refusals", default=None
)


def note(error: SandboxLoadError) -> None:
    """Record ``error``, about to be raised elsewhere, so the enclosing scope re-raises it if
    it is swallowed."""
    recorded = _recorded.get()
    if recorded is not None and error not in recorded:
        recorded.append(error)


def refuse(error: SandboxLoadError) -> NoReturn:
    """Raise ``error``, recorded so the enclosing scope re-raises it if it is swallowed."""
    note(error)
    raise error


@contextmanager
def scope() -> Iterator[None]:
    """Re-raise, at exit, the first refusal recorded inside (nested scopes each do)."""
    recorded = _recorded.get()
    token = None
    if recorded is None:
        recorded = []
        token = _recorded.set(recorded)
    start = len(recorded)
    try:
        yield
    except BaseException as exc:
        if len(recorded) > start and recorded[start] is not exc:
            raise recorded[start] from exc
        raise
    else:
        if len(recorded) > start:
            raise recorded[start]
    finally:
        if token is not None:
            _recorded.reset(token)
