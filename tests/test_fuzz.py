"""Property-based fuzzing of every parser of hostile input (hypothesis):

- the parent's description validator, on mutations of honest descriptions of real
  checkpoints: it returns objects whose every tensor reads inside its storage, or raises
  CorruptCheckpointError / UnsafeGlobalError -- nothing else;
- the child's readers and unpickler, in the real sandbox, on byte mutations of real zip,
  legacy and tar checkpoints: a result, or a typed sandboxload error, never a parent crash
  or hang;
- the safetensors header validator, on mutated headers: a header, or InvalidSafetensorsError.

CI runs the ``ci`` profile (a short budget per target); ``SANDBOXLOAD_FUZZ=long`` runs the
long one (``HYPOTHESIS_MAX_EXAMPLES`` examples per target, 100,000 by default).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sandboxload import policy  # noqa: E402
from sandboxload.errors import (  # noqa: E402
    CorruptCheckpointError,
    InvalidSafetensorsError,
    SandboxLoadError,
    UnsafeGlobalError,
)
from sandboxload.safetensors_header import parse_header  # noqa: E402
from sandboxload.sandbox import client, memfds  # noqa: E402
from sandboxload.sandbox.load import limits  # noqa: E402

from . import corpus  # noqa: E402
from .helpers import rebuild_over  # noqa: E402

LONG = os.environ.get("SANDBOXLOAD_FUZZ") == "long"
# CI is deterministic (a fixed sequence of examples: no flaky runs); the long run explores.
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "100000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
PROFILE = "long" if LONG else "ci"


def _honest() -> dict[str, tuple[bytes, dict[str, Any], bytes]]:
    """(file bytes, description, memfd bytes) of real checkpoints, parsed by the real child."""
    cases = corpus.cases()
    out = {}
    for name in ("views", "containers", "numpy", "params", "dtypes"):
        for legacy in (False, True):
            buf = io.BytesIO()
            try:
                torch.save(cases[name], buf, _use_new_zipfile_serialization=not legacy)
            except Exception:  # not every case has a legacy form
                continue
            data = buf.getvalue()
            fd = memfds.from_bytes(data)
            try:
                reader = "torch-legacy" if legacy else "torch-zip"
                parsed = client.run(fd, len(data), reader, name, limits(policy.resolve({}), 0))
                memfd = os.pread(parsed.memfd, parsed.memfd_capacity, 0)
                os.close(parsed.memfd)
            finally:
                os.close(fd)
            out[f"{name}.{'legacy' if legacy else 'zip'}"] = (data, parsed.description, memfd)
    return out


HONEST = _honest()
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, list):
        for i, x in enumerate(value):
            out += _paths(x, (*prefix, i))
    elif isinstance(value, dict):
        for k, x in value.items():
            out += _paths(x, (*prefix, k))
    return out


def _touch_every_tensor(obj: Any) -> None:
    """Read every byte every tensor covers (an out-of-bounds view would crash here)."""
    stack, seen = [obj], set()
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.numel():
            # The bytes it spans in its storage (a zero-stride view may be huge, its span not).
            span = x.storage_offset() + sum(
                (n - 1) * s for n, s in zip(x.shape, x.stride(), strict=True)
            )
            storage = x.untyped_storage()
            start, end = x.storage_offset() * x.element_size(), (span + 1) * x.element_size()
            assert 0 <= start <= end <= storage.nbytes()
            bytes(storage[start:end])
        elif isinstance(x, dict):
            stack += [*x.keys(), *x.values()]
        elif isinstance(x, list | tuple | set | frozenset):
            stack += list(x)
        elif hasattr(x, "__dict__"):
            stack += list(vars(x).values())


@settings(settings.get_profile(PROFILE))
@given(
    name=st.sampled_from(sorted(HONEST)),
    picks=st.lists(st.tuples(st.integers(min_value=0), JSON), min_size=1, max_size=3),
)
def test_mutated_descriptions(name: str, picks: list[tuple[int, Any]]) -> None:
    data, honest, memfd = HONEST[name]
    description = copy.deepcopy(honest)
    for where, value in picks:
        paths = _paths(description)[1:]
        path = paths[where % len(paths)]
        target = description
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
    json.dumps(description)  # still what a child could send
    try:
        out = rebuild_over(description, data, memfd, name)
    except (CorruptCheckpointError, UnsafeGlobalError):
        return
    _touch_every_tensor(out)


SEEDS = {name: HONEST[name][0] for name in sorted(HONEST)}


@pytest.fixture(scope="module")
def sandboxed_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sandboxload

    sandboxload.activate(export_env=False)
    return tmp_path_factory.mktemp("fuzz")


@settings(
    settings.get_profile(PROFILE),
    max_examples=settings.get_profile(PROFILE).max_examples if LONG else 40,
)
@given(
    name=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=8,
    ),
    cut=st.none() | st.integers(min_value=0),
)
def test_mutated_checkpoints_in_the_real_sandbox(
    sandboxed_module: Path, name: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(SEEDS[name])
    for at, byte in edits:
        data[at % len(data)] = byte
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    try:
        out = torch.load(io.BytesIO(bytes(data)), weights_only=True)
    except SandboxLoadError:
        return
    _touch_every_tensor(out)


def _header(entries: dict[str, Any]) -> bytes:
    raw = json.dumps(entries).encode()
    return struct.pack("<Q", len(raw)) + raw


SAFETENSORS_SEED = safetensors.torch.save(
    {"a": torch.ones(3), "b": torch.arange(4, dtype=torch.int16)}, metadata={"format": "pt"}
)


@settings(settings.get_profile(PROFILE))
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=6
    ),
    cut=st.none() | st.integers(min_value=0),
)
def test_mutated_safetensors_headers(edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(SAFETENSORS_SEED)
    for at, byte in edits:
        data[at % len(data)] = byte
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    try:
        header = parse_header(bytes(data), len(data), "<fuzz>")
    except InvalidSafetensorsError:
        return
    end = max((e[3] for e in header.tensors.values()), default=0)
    assert 8 + header.header_len + end == len(data)


@settings(settings.get_profile(PROFILE))
@given(entries=st.dictionaries(st.text(max_size=8), JSON, max_size=4), tail=st.binary(max_size=64))
def test_structured_safetensors_headers(entries: dict[str, Any], tail: bytes) -> None:
    data = _header(entries) + tail
    with contextlib.suppress(InvalidSafetensorsError):
        parse_header(data, len(data), "<fuzz>")


def _zip_seed() -> bytes:
    buf = io.BytesIO()
    torch.save({"a": torch.ones(2), "b": [torch.zeros(1)] * 3}, buf)
    return buf.getvalue()


ZIP_SEED = _zip_seed()


@settings(settings.get_profile(PROFILE))
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=6
    ),
    cut=st.none() | st.integers(min_value=0),
)
def test_mutated_zip_directories_are_named_as_zipfile_names_them(
    edits: list[tuple[int, int]], cut: int | None
) -> None:
    """The parent's fast reader of member names never raises and, whenever it answers,
    agrees with zipfile (where zipfile can read the archive at all)."""
    import zipfile

    from sandboxload import zipnames

    data = bytearray(ZIP_SEED)
    for at, byte in edits:
        data[at % len(data)] = byte
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    fd = memfds.from_bytes(bytes(data))
    try:
        fast = zipnames.names(fd, len(data))
    except struct.error:
        fast = None  # caught by the caller, which then asks zipfile
    finally:
        os.close(fd)
    if fast is None:
        return
    try:
        slow = zipfile.ZipFile(io.BytesIO(bytes(data))).namelist()
    except Exception:
        return
    assert fast == slow
