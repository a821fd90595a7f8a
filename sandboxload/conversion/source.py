"""One checkpoint parsed in the sandbox for conversion, whatever ``pickle`` says.

Converting is what the sandbox is for: the file is parsed by the confined child (never by
torch in this process, even under ``pickle=allow``; nor refused under ``pickle=refuse``, which
governs loads at run time). Everything else of the policy holds: the manifest (a pinned file
must match), the limits, the extra globals, seccomp. Safetensors files need no conversion;
TorchScript archives and files that are not checkpoints are refused by the same route table
the loaders use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import formats, loader, policy, routes

API = "sandboxload convert"
# What converting fixes whatever the policy says (the rest of the policy applies).
CONVERTING: dict[str, Any] = {"pickle": "sandbox", "formats": ()}


def sniff(path: str) -> str:
    """The format of the file at ``path`` (opened as a load opens it: regular files only)."""
    with loader.open_source(path) as src:
        return formats.sniff(src.file)


def is_checkpoint(fmt: str) -> bool:
    """Whether the sandbox reads this format (a pickle-based torch checkpoint)."""
    return fmt != formats.SAFETENSORS and fmt in formats.READER


def load(path: str, check: Callable[[str, int], None] | None = None) -> tuple[Any, int]:
    """The checkpoint at ``path``, rebuilt from the sandbox's description (tensors own their
    memory: nothing maps the file once this returns), and the file's size. ``check(path,
    fd)`` vets the file opened before a byte of it is read."""
    with policy.overridden(API, **CONVERTING):
        pol = policy.current()
    with loader.open_source(path) as src:
        if check is not None and src.fd is not None:
            check(path, src.fd)
        a = loader.decide(src, pol, API, routes.ANY_WEIGHTS)
        if a.route.refused:
            a.log.write("refused", a.route.name, a.route.reason)
            raise a.route.refusal(src.name)
        loader.pin(a)
        try:
            result = loader.sandboxed(a, "cpu", mmap=False)
        except Exception as exc:
            a.log.write("refused", a.route.name, f"{type(exc).__name__}: {exc}")
            raise
        a.log.write("loaded", a.route.name, "parsed for conversion")
        return result, src.size
