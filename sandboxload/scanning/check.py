"""The checks of one unit of a scan, each giving result rows.

A weight file goes through the loader's own decision (:func:`loader.decide`: sniff, then
:func:`routes.route` under the current policy) and its hash pinning -- which checks a Hugging
Face cache blob against its name, from the descriptor then parsed -- so a verdict here is the
route the patched ``torch.load`` takes. Then the route's check, without loading anything:
safetensors get the strict header check; pickles are parsed in the sandbox (nothing is built),
so one that names a global outside the allowlist is reported with that global.

A config file is read once, checked against its blob name, and parsed for remote code
(:mod:`sandboxload.remotecode`); code files and ``custom_generate/`` are remote code as they
stand. Remote code is ``refused`` unless the policy allows it.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import formats, loader, pinning, policy, remotecode, routes
from ..errors import HashMismatchError, SandboxLoadError
from ..fileid import open_regular
from ..wording import count
from .units import CODE, CONFIG, CUSTOM_GENERATE, DIR_LINK, Unit

OK, REFUSED, UNSAFE, ERROR = "ok", "refused", "unsafe", "error"
# Rule ids (SARIF ruleId): what kind of finding a row is.
WEIGHTS_OK, WEIGHTS_REFUSED, WEIGHTS_UNSAFE = "weights-ok", "weights-refused", "weights-unsafe"
REMOTE_CODE, CACHE_INTEGRITY, UNREADABLE = "remote-code", "cache-integrity", "unreadable"
MAX_CONFIG = 16 << 20  # a config bigger than this is not parsed (an error, not a pass)


@dataclass
class Row:
    file: str
    verdict: str
    detail: str
    rule: str
    format: str = "-"
    route: str = "-"
    also: list[str] = field(default_factory=list)  # the same blob under other snapshot paths

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(unit: Unit, pol: policy.Policy | None = None) -> list[Row]:
    pol = pol or policy.current()
    first, also = unit.paths[0], unit.paths[1:]
    if unit.problem is not None:
        return [Row(first, REFUSED, unit.problem, CACHE_INTEGRITY, also=also)]
    if unit.kind == DIR_LINK:
        detail = "a linked directory, not followed, so not checked: scan its target by its path"
        return [Row(first, ERROR, detail, UNREADABLE, also=also)]
    if unit.kind == CODE:
        return [_remote(first, f"Python code: {os.path.basename(first)}", pol, also)]
    if unit.kind == CUSTOM_GENERATE:
        what = "a custom_generate/ directory: transformers runs its generate.py"
        return [_remote(first, what, pol, also)]
    rows = _config(first, pol) if unit.kind == CONFIG else [classify(first, pol)]
    for row in rows:
        row.also = also
    return rows


def _remote(path: str, what: str, pol: policy.Policy, also: list[str] | None = None) -> Row:
    allowed = pol.remote_code == "allow"
    detail = f"remote code: {what} ({'allowed by' if allowed else 'refused under'} "
    detail += f"remote_code={pol.remote_code})"
    return Row(path, OK if allowed else REFUSED, detail, REMOTE_CODE, also=also or [])


def _config(path: str, pol: policy.Policy) -> list[Row]:
    name = os.path.basename(path)
    try:
        fd = open_regular(path)
        try:
            size = os.fstat(fd).st_size
            if size > MAX_CONFIG:
                return [Row(path, ERROR, f"over {MAX_CONFIG} bytes: not checked", UNREADABLE)]
            data = os.pread(fd, size + 1, 0)
        finally:
            os.close(fd)
        pinning.check_blob(path, data)  # the bytes parsed are the bytes hashed
    except HashMismatchError as exc:
        return [Row(path, REFUSED, f"{type(exc).__name__}: {exc}", CACHE_INTEGRITY)]
    except SandboxLoadError as exc:  # not a regular file
        return [Row(path, REFUSED, f"{type(exc).__name__}: {exc}", UNREADABLE)]
    except OSError as exc:
        return [Row(path, ERROR, exc.strerror or str(exc), UNREADABLE)]
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        detail = f"not valid JSON, so not checked for remote code ({type(exc).__name__})"
        return [Row(path, ERROR, detail, UNREADABLE)]
    return [_remote(path, what, pol) for what in remotecode.config_findings(name, doc)]


def classify(path: str, pol: policy.Policy | None = None) -> Row:
    """One weight file: the loader's decision, its pins, then its route's check."""
    pol = pol or policy.current()
    fmt, route, rule = "-", routes.REFUSED, WEIGHTS_REFUSED
    try:
        with loader.open_source(path) as src:
            a = loader.decide(src, pol, "scan", routes.ANY_WEIGHTS, audit=False)
            fmt, route = a.fmt, a.route.name
            if a.route.refused:
                raise a.route.refusal(path)
            loader.pin(a)
            verdict, detail = _check(a)
            rule = {OK: WEIGHTS_OK, UNSAFE: WEIGHTS_UNSAFE}[verdict]
    except HashMismatchError as exc:
        verdict, detail = REFUSED, f"{type(exc).__name__}: {exc}"
        if pinning.hf_blob_digest(path) == exc.expected:
            rule = CACHE_INTEGRITY
    except SandboxLoadError as exc:
        verdict, detail = REFUSED, f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        verdict, detail, rule = ERROR, exc.strerror or str(exc), UNREADABLE
    return Row(path, verdict, detail, rule, fmt, route)


def _check(a: loader.Admitted) -> tuple[str, str]:
    assert a.src.fd is not None
    if a.route.name == routes.SAFETENSORS:
        from ..safetensors_header import read_header

        header = read_header(a.src.fd, a.src.name)
        return OK, f"valid header, {count(len(header.tensors), 'tensor')}"
    reader = formats.READER.get(a.fmt)
    if a.route.name == routes.IN_PROCESS and reader is None:
        return UNSAFE, f"pickle=allow hands this {a.fmt} file to torch's own loader in-process"
    assert reader is not None
    try:
        storages = _parse_only()(a.src.fd, a.src.size, reader, a.src.name, a.pol)
    except SandboxLoadError as exc:
        if a.route.name == routes.IN_PROCESS:
            return UNSAFE, f"pickle=allow would load it in-process: {type(exc).__name__}: {exc}"
        raise
    where = "in-process (pickle=allow)" if a.route.name == routes.IN_PROCESS else "the sandbox"
    return OK, f"pickle with only data: {count(storages, 'storage')} (loads through {where})"


_importing = threading.Lock()


def _parse_only() -> Any:
    """``sandbox.load.parse_only``, imported on the first pickle (it imports torch), once
    even when several scan threads reach it together."""
    with _importing:
        from ..sandbox.load import parse_only

    return parse_only
