"""The checks of one unit of a scan, each giving result rows.

A weight file goes through the loader's own decision (:func:`loader.decide`: sniff, then
:func:`routes.route` under the current policy) and its hash pinning -- which checks a Hugging
Face cache blob against its name, from the descriptor then parsed -- so a verdict here is the
route the patched ``torch.load`` takes. Then the route's check, without loading anything:
safetensors get the strict header check; pickles are parsed in the sandbox (nothing is built),
so one that names a global outside the allowlist is reported with that global.

A config file is read once, checked against its blob name, and parsed -- under each name a
cache blob is linked as -- for remote code (:mod:`sandboxload.remotecode`) and for loader
arguments that make loading unsafe (:func:`sandboxload.modelfolder.loader_kwargs_findings`);
code files and ``custom_generate/`` are remote code as they stand. Remote code is ``refused``
unless the policy allows it. A shard index's findings come from the listing
(:mod:`.units`). Any other file is sniffed: a pickle under any name is checked as a weight
file. Every file is judged on the descriptor opened: one that links out of the folder scanned
is refused (:func:`sandboxload.modelfolder.link_outside`, the rule ``convert`` applies too).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import formats, loader, modelfolder, pickleprobe, pinning, policy, remotecode, routes
from ..conversion.content import PICKLED, pickle_in
from ..errors import HashMismatchError, SandboxLoadError
from ..fileid import open_regular
from ..modelfolder import DCP_DATA_SUFFIX, is_dcp_metadata, link_outside, opened_as
from ..wording import count
from . import distcp, units
from .units import CODE, CONFIG, CUSTOM_GENERATE, DIR_LINK, INDEX, OTHER, UNLISTED, Unit

OK, REFUSED, UNSAFE, ERROR = "ok", "refused", "unsafe", "error"
# Rule ids (SARIF ruleId): what kind of finding a row is.
WEIGHTS_OK, WEIGHTS_REFUSED, WEIGHTS_UNSAFE = "weights-ok", "weights-refused", "weights-unsafe"
REMOTE_CODE, CACHE_INTEGRITY, UNREADABLE = "remote-code", "cache-integrity", "unreadable"
LOADING_REDIRECT = "loading-redirect"
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
    if unit.kind == UNLISTED:
        return [Row(first, ERROR, str(unit.problem), UNREADABLE, also=also)]
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
    if unit.kind == CONFIG:
        return _config(unit, pol)
    if unit.kind == INDEX:
        return _index(unit)
    rows = (
        _other(first, pol, unit.root) if unit.kind == OTHER else [classify(first, pol, unit.root)]
    )
    for row in rows:
        row.also = also
    return rows


def _remote(path: str, what: str, pol: policy.Policy, also: list[str] | None = None) -> Row:
    allowed = pol.remote_code == "allow"
    detail = f"remote code: {what} ({'allowed by' if allowed else 'refused under'} "
    detail += f"remote_code={pol.remote_code})"
    return Row(path, OK if allowed else REFUSED, detail, REMOTE_CODE, also=also or [])


def _read(path: str, root: str, limit: int = MAX_CONFIG) -> bytes | Row:
    """A small file's bytes, checked against its blob name and read from inside ``root``;
    or the row that says why not."""
    try:
        fd = open_regular(path)
        try:
            why = link_outside(root, path, opened_as(fd)) if root else None
            if why is not None:
                return Row(path, REFUSED, why, LOADING_REDIRECT)
            size = os.fstat(fd).st_size
            if size > limit:
                return Row(path, ERROR, f"over {limit} bytes: not checked", UNREADABLE)
            data = os.pread(fd, size + 1, 0)
        finally:
            os.close(fd)
        pinning.check_blob(path, data)  # the bytes parsed are the bytes hashed
    except HashMismatchError as exc:
        return Row(path, REFUSED, f"{type(exc).__name__}: {exc}", CACHE_INTEGRITY)
    except SandboxLoadError as exc:  # not a regular file
        return Row(path, REFUSED, f"{type(exc).__name__}: {exc}", UNREADABLE)
    except OSError as exc:
        return Row(path, ERROR, exc.strerror or str(exc), UNREADABLE)
    return data


def _config(unit: Unit, pol: policy.Policy) -> list[Row]:
    """A config under each name it is listed as (a cache blob may be linked as both
    ``modules.json`` and ``1_Asym/config.json``: each name is read differently)."""
    data = _read(unit.paths[0], unit.root)
    if isinstance(data, Row):
        data.also = unit.paths[1:]
        return [data]
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        detail = f"not valid JSON, so not checked for remote code ({type(exc).__name__})"
        return [Row(unit.paths[0], ERROR, detail, UNREADABLE, also=unit.paths[1:])]
    rows = []
    for name in dict.fromkeys(os.path.basename(p) for p in unit.paths):
        path = next(p for p in unit.paths if os.path.basename(p) == name)
        also = [p for p in unit.paths if p != path]
        rows += [_remote(path, what, pol, also) for what in remotecode.config_findings(name, doc)]
        rows += [
            Row(path, REFUSED, f"unsafe loading: {what}", LOADING_REDIRECT, also=also)
            for what in remotecode.redirect_findings(name, doc)
        ]
        for arg, what in modelfolder.loader_kwargs_findings(doc):
            if arg == "trust_remote_code":
                rows.append(_remote(path, what, pol, also))
            else:
                detail = f"unsafe loading: {what}"
                rows.append(Row(path, REFUSED, detail, LOADING_REDIRECT, also=also))
    return rows


def _index(unit: Unit) -> list[Row]:
    """A shard index: its own bytes, then what the listing found wrong with its weight_map
    (each file it names is scanned as a weight file, whatever its name)."""
    data = _read(unit.paths[0], unit.root, units.MAX_INDEX)
    if isinstance(data, Row):
        data.also = unit.paths[1:]
        return [data]
    rows = []
    for kind, path, detail in unit.findings:
        also = [p for p in unit.paths if p != path]
        if kind == units.OUTSIDE:
            rows.append(Row(path, REFUSED, detail, LOADING_REDIRECT, also=also))
        else:
            rows.append(Row(path, ERROR, detail, UNREADABLE, also=also))
    return rows


def _other(path: str, pol: policy.Policy, root: str) -> list[Row]:
    """A file not named like anything a library loads: sniffed, and checked as a weight
    file if it holds a pickle (a protocol-0 pickle is text and cannot be told from text)."""
    try:
        fd = open_regular(path)
        try:
            why = link_outside(root, path, opened_as(fd))
            if why is not None:
                return [Row(path, REFUSED, why, LOADING_REDIRECT)]
            inside = pickle_in(fd)
        finally:
            os.close(fd)
    except SandboxLoadError as exc:  # not a regular file
        return [Row(path, REFUSED, f"{type(exc).__name__}: {exc}", UNREADABLE)]
    except OSError as exc:
        return [Row(path, ERROR, exc.strerror or str(exc), UNREADABLE)]
    if inside is None:
        return []
    if "NumPy" in inside:
        return [Row(path, REFUSED, inside, WEIGHTS_REFUSED, formats.NUMPY)]
    row = classify(path, pol, root)
    row.detail = f"not named like a weight file, but {inside}: {row.detail}"
    return [row]


def _distcp(path: str, pol: policy.Policy, root: str) -> Row:
    """A dcp data file: every record its folder's .metadata names, as dcp.load reads it."""
    try:
        if root:
            fd = open_regular(path)
            try:
                why = link_outside(root, path, opened_as(fd))
            finally:
                os.close(fd)
            if why is not None:
                return Row(path, REFUSED, why, LOADING_REDIRECT)
        detail = distcp.check(path, pol)
    except SandboxLoadError as exc:
        return Row(path, REFUSED, f"{type(exc).__name__}: {exc}", WEIGHTS_REFUSED, "dcp-data")
    except OSError as exc:
        return Row(path, ERROR, exc.strerror or str(exc), UNREADABLE)
    return Row(path, OK, detail, WEIGHTS_OK, "dcp-data", routes.SANDBOX)


def classify(path: str, pol: policy.Policy | None = None, root: str = "") -> Row:
    """One weight file: inside ``root`` (if given), the loader's decision, its pins, then
    its route's check."""
    pol = pol or policy.current()
    if path.endswith(DCP_DATA_SUFFIX):
        return _distcp(path, pol, root)
    fmt, route, rule = "-", routes.REFUSED, WEIGHTS_REFUSED
    try:
        with loader.open_source(path) as src:
            why = (
                link_outside(root, path, opened_as(src.fd)) if root and src.fd is not None else None
            )
            if why is not None:
                return Row(path, REFUSED, why, LOADING_REDIRECT)
            asked = routes.DCP_METADATA if is_dcp_metadata(path) else routes.ANY_WEIGHTS
            a = loader.decide(src, pol, "scan", asked, audit=False)
            fmt, route = a.fmt, a.route.name
            if a.route.refused:
                raise a.route.refusal(path)
            loader.pin(a)
            verdict, detail = _check(a)
            rule = {OK: WEIGHTS_OK, UNSAFE: WEIGHTS_UNSAFE}[verdict]
            also = _also_a_pickle(a)
            if also is not None:
                verdict, detail, rule = REFUSED, also, WEIGHTS_REFUSED
    except HashMismatchError as exc:
        verdict, detail = REFUSED, f"{type(exc).__name__}: {exc}"
        if pinning.hf_blob_digest(path) == exc.expected:
            rule = CACHE_INTEGRITY
    except SandboxLoadError as exc:
        verdict, detail = REFUSED, f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        verdict, detail, rule = ERROR, exc.strerror or str(exc), UNREADABLE
    return Row(path, verdict, detail, rule, fmt, route)


def _also_a_pickle(a: loader.Admitted) -> str | None:
    """A file read as something else (safetensors, NumPy) that is also a pickle stream that
    acts: ``torch.load`` of it -- a ``training_args.bin`` -- would unpickle it."""
    if a.fmt in (*PICKLED, formats.PICKLE) or a.src.fd is None:
        return None
    why = pickleprobe.pickled_fd(a.src.fd)
    if why is None:
        return None
    return f"it reads as {a.fmt}, but {why} that torch.load or pickle.load would run"


def _check(a: loader.Admitted) -> tuple[str, str]:
    assert a.src.fd is not None
    if a.route.name == routes.SAFETENSORS:
        from ..safetensors_header import read_header

        header = read_header(a.src.fd, a.src.name)
        return OK, f"valid header, {count(len(header.tensors), 'tensor')}"
    if is_dcp_metadata(a.src.name):
        return _dcp_metadata(a)
    reader = a.route.reader or formats.READER.get(a.fmt)
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


def _dcp_metadata(a: loader.Admitted) -> tuple[str, str]:
    """A dcp ``.metadata``: parsed in the sandbox into dcp's records, then checked against
    its folder by the run-time rule (which applies under ``pickle=allow`` too)."""
    in_process = a.route.name == routes.IN_PROCESS
    try:
        meta = distcp.parsed(a)
    except SandboxLoadError as exc:
        if in_process:
            return UNSAFE, f"pickle=allow would load it in-process: {type(exc).__name__}: {exc}"
        raise
    files = distcp.in_folder(meta, a.src.name)
    where = "in-process (pickle=allow)" if in_process else "the sandbox"
    records = sum(len(r) for r in files.values())
    return OK, (
        f"dcp metadata with only data: {count(records, 'record')} in "
        f"{count(len(files), 'data file')} of the folder (loads through {where})"
    )


_importing = threading.Lock()


def _parse_only() -> Any:
    """``sandbox.load.parse_only``, imported on the first pickle (it imports torch), once
    even when several scan threads reach it together."""
    with _importing:
        from ..sandbox.load import parse_only

    return parse_only
