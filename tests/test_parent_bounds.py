"""The parent pays for a load no more than the policy allows (issue 10, classes 3 and 4).

The child is bounded by its deadline and rlimits. These files target the process that
rebuilds the child's description: a hash flood (keys whose hashes collide: each insertion
scans all the others), a key nested deep enough to overflow the C stack when hashed, a
million tiny containers. Each is proven live without sandboxload, then bounded with it: a
typed error within about the timeout, or a load whose memory is a documented multiple of the
file size; and caches hold bytes, not entries.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from sandboxload import fileid
from sandboxload.errors import CorruptCheckpointError, SandboxTimeoutError
from sandboxload.sandbox import load as sandbox_load
from sandboxload.sandbox.budget import MAX_COLLISIONS, MAX_KEY_HEIGHT
from sandboxload.sandbox.protocol import VERSION

from .floods import as_checkpoint, colliding_pairs, container_flood, size_key_flood
from .helpers import PY, clean_env, rebuild_over, run_py

pytestmark = pytest.mark.usefixtures("sandboxed")
TIMEOUT = 2.0


def _write(tmp_path: Path, name: str, data_pkl: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(as_checkpoint(data_pkl))
    return path


def test_the_flood_is_live_without_sandboxload(tmp_path: Path) -> None:
    """torch's own loader builds these keys: distinct, one hash (so a dict of 40,000 of them
    costs ~quadratic time in any process that builds it)."""
    path = _write(tmp_path, "flood.pt", size_key_flood(200))
    proc = run_py(
        f"import torch; d = torch.load({str(path)!r}, weights_only=True); "
        "print(len(d), len({hash(k) for k in d}))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["200", "1"]


def test_a_hash_flood_ends_typed_within_twice_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under SANDBOXLOAD_TIMEOUT=2 (minutes to rebuild before): refused as a hash flood, or
    -- on a machine too busy to parse it in time -- stopped by the deadline."""
    path = _write(tmp_path, "flood.pt", size_key_flood(40_000))
    monkeypatch.setenv("SANDBOXLOAD_TIMEOUT", str(TIMEOUT))
    start = time.monotonic()
    with pytest.raises((CorruptCheckpointError, SandboxTimeoutError)) as info:
        torch.load(path)
    assert time.monotonic() - start < 2 * TIMEOUT
    if isinstance(info.value, CorruptCheckpointError):
        assert "hash flood" in str(info.value)


def test_a_hash_flood_is_refused_as_one(tmp_path: Path) -> None:
    with pytest.raises(CorruptCheckpointError, match="hash flood"):
        torch.load(_write(tmp_path, "flood.pt", size_key_flood(40_000)))


def test_a_few_colliding_keys_still_load_as_torch_loads_them(tmp_path: Path) -> None:
    path = _write(tmp_path, "few.pt", size_key_flood(MAX_COLLISIONS))
    got = torch.load(path)
    assert list(got) == [torch.Size(p) for p in colliding_pairs(MAX_COLLISIONS)]
    assert all(type(k) is torch.Size for k in got) and set(got.values()) == {0}


def _chain(depth: int) -> dict[str, object]:
    """A description: ``{((((),),),...): 1}``, a tuple nested ``depth`` deep as a key."""
    nodes: list[list[object]] = [["tuple", []]]
    nodes += [["tuple", [i]] for i in range(depth)]
    nodes += [["int", 1], ["dict", [[depth, depth + 1]]]]
    return {"version": VERSION, "storages": [], "nodes": nodes, "root": depth + 2}


def test_hashing_a_deep_key_kills_a_process() -> None:
    """Live: hashing a nested tuple recurses in C; deep enough, the interpreter dies."""
    code = "t = ()\nfor _ in range(1_000_000): t = (t,)\nhash(t)\n"
    proc = subprocess.run([PY, "-c", code], env=clean_env(), capture_output=True, timeout=120)
    assert proc.returncode < 0  # killed by a signal (SIGSEGV): no Python error to catch


@pytest.mark.parametrize("depth", [MAX_KEY_HEIGHT + 1, 1_000_000])
def test_a_deep_key_is_refused_before_it_is_hashed(depth: int) -> None:
    """The child would crash on such a file itself; a description that says so anyway (a
    child that misbehaves) is refused by the parent, which survives."""
    with pytest.raises(CorruptCheckpointError, match="nested too deeply"):
        rebuild_over(_chain(depth), b"\0" * (depth + 64))
    assert rebuild_over(_chain(8), b"\0" * 80) == {_nested(8): 1}


def _nested(depth: int) -> tuple[object, ...]:
    t: tuple[object, ...] = ()
    for _ in range(depth):
        t = (t,)
    return t


def test_the_rebuild_counts_against_the_same_deadline() -> None:
    """A description that is slow to rebuild (here: many objects) stops at the deadline,
    typed, instead of running on after the child was done."""
    n = 2_000_000
    nodes: list[list[object]] = [["list", list(range(1, n + 1))]] + [["list", []]] * n
    description = {"version": VERSION, "storages": [], "nodes": nodes, "root": 0}
    start = time.monotonic()
    with pytest.raises(SandboxTimeoutError, match="rebuilding"):
        rebuild_over(description, b"\0" * (n + 64), deadline=(start + 0.2, 0.2))
    assert time.monotonic() - start < 1.0


def test_objects_are_bounded_by_the_file_size() -> None:
    nodes: list[list[object]] = [["list", list(range(1, 1001))]] + [["list", []]] * 1000
    description = {"version": VERSION, "storages": [], "nodes": nodes, "root": 0}
    with pytest.raises(CorruptCheckpointError, match="more objects than the file has bytes"):
        rebuild_over(description, b"\0" * 100)
    assert len(rebuild_over(description, b"\0" * 1000)) == 1000


def test_a_million_containers_end_within_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "lists.pt", container_flood(1_000_000))
    monkeypatch.setenv("SANDBOXLOAD_TIMEOUT", str(TIMEOUT))
    start = time.monotonic()
    try:
        result = torch.load(path)
        assert len(result) == 1_000_000 and result[-1] == []  # loaded in time: also fine
    except SandboxTimeoutError:
        pass
    assert time.monotonic() - start < 2 * TIMEOUT


MEMORY = """
import gc, json, sys, tracemalloc, torch, sandboxload
from sandboxload.sandbox.load import _kept
sandboxload.activate()
torch.load(sys.argv[2])  # warm: imports, the spare worker, torch's lazy state
tracemalloc.start()
result = torch.load(sys.argv[1])
size = tracemalloc.get_traced_memory()[0]
peak = tracemalloc.get_traced_memory()[1]
del result
gc.collect()
after = tracemalloc.get_traced_memory()[0]
print(json.dumps({"peak": peak, "kept": size, "after": after, "cache": _kept.bytes}))
"""


@pytest.mark.parametrize("n", [50_000, 200_000])
def test_transient_memory_is_a_bounded_multiple_of_the_file_size(tmp_path: Path, n: int) -> None:
    """docs/sandbox.md: while rebuilding, this process holds at most PER_BYTE times the
    file's size (a description of one-byte containers is the worst case) beyond the result,
    and nothing after the result is dropped."""
    path = _write(tmp_path, "lists.pt", container_flood(n))
    warm = _write(tmp_path, "warm.pt", container_flood(10))
    proc = subprocess.run(
        [PY, "-c", MEMORY, str(path), str(warm)],
        env=clean_env(SANDBOXLOAD_TIMEOUT="60"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    size = path.stat().st_size
    transient = got["peak"] - got["kept"]
    print(f"\n{n} lists, {size} bytes: transient {transient / size:.0f} x the file size")
    assert transient <= sandbox_load.TRANSIENT_PER_BYTE * size
    assert got["after"] - got["cache"] < 1 << 20  # only the kept JSON (bounded) remains


def test_the_kept_descriptions_are_bounded_by_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only descriptions of files are kept (a stream's memfd is new every time), and the
    total kept is bounded by bytes, whatever the number of files."""
    monkeypatch.setattr(fileid, "SETTLE_NS", 0)  # files just written count as settled
    kept = sandbox_load._kept
    kept.clear()
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, path)
    for _ in range(5):
        torch.load(io.BytesIO(path.read_bytes()))
    assert not kept.items
    torch.load(path)
    assert len(kept.items) == 1
    big = {f"k{i}": torch.zeros(1) for i in range(20_000)}  # a description of ~2 MB
    for i in range(12):
        torch.save(big, tmp_path / f"big{i}.pt")
        torch.load(tmp_path / f"big{i}.pt", mmap=True)
        assert kept.bytes <= sandbox_load.KEPT_BYTES
    assert 1 < len(kept.items) < 12  # kept while they fit, then the oldest dropped
    kept.clear()


def test_a_description_larger_than_the_budget_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = sandbox_load._kept
    kept.clear()
    monkeypatch.setattr(kept, "max_bytes", 1000)
    path = tmp_path / "w.pt"
    torch.save({f"k{i}": torch.zeros(1) for i in range(100)}, path)
    assert len(torch.load(path)) == 100
    assert not kept.items
    kept.clear()


# --- found by the attack review of this change --------------------------------------------


def test_equal_big_keys_in_separate_dicts_are_not_compared() -> None:
    """Two equal 1 MB strings (distinct objects) in two tuples of 1,000 references, each the
    key of its own dict: Python never compares keys of different dicts, and neither does the
    guard; such a key is too large to hash cheaply and is refused at once."""
    big = "x" * (1 << 20)
    k = 1000
    nodes = [
        ["list", [6, 7]],  # the result: both dicts (shells, referenced before they appear)
        ["str", big],
        ["str", big],  # equal to node 1, a distinct object
        ["tuple", [1] * k],
        ["tuple", [2] * k],
        ["int", 0],
        ["dict", [[3, 5]]],
        ["dict", [[4, 5]]],
    ]
    description = {"version": VERSION, "storages": [], "nodes": nodes, "root": 0}
    start = time.monotonic()
    with pytest.raises(CorruptCheckpointError, match="too large to hash"):
        rebuild_over(description, b"\0" * 64, deadline=(start + 1.0, 1.0))
    assert time.monotonic() - start < 1.0


def test_numpy_copies_are_bounded_by_the_memfd() -> None:
    """A misbehaving child naming one memfd range for many arrays: each copy is paid, and
    all of them together may not exceed the memfd."""
    m = 1 << 20
    nodes: list[list[object]] = [["list", [2, 3, 4]], ["npdtype", "|u1", False, False, None]]
    nodes += [["ndarray", "frombuffer", 1, 1, [m], False, 0, m] for _ in range(3)]
    description = {"version": VERSION, "storages": [], "nodes": nodes, "root": 0}
    with pytest.raises(CorruptCheckpointError, match="exceed the memfd"):
        rebuild_over(description, b"\0" * 64, memfd=b"\0" * m)
    description["nodes"] = nodes[:3]
    description["nodes"][0] = ["list", [2]]
    (array,) = rebuild_over(description, b"\0" * 64, memfd=b"\1" * m)
    assert array.nbytes == m and int(array.sum()) == m


def test_the_storage_table_counts_against_the_deadline() -> None:
    n = 1_000_000
    storages = [["float32", 0, "file", 0, "cpu", None]] * n
    description = {"version": VERSION, "storages": storages, "nodes": [["none"]], "root": 0}
    start = time.monotonic()
    with pytest.raises(SandboxTimeoutError):
        rebuild_over(description, b"\0" * (n + 64), deadline=(start + 0.2, 0.2))
    assert time.monotonic() - start < 1.0
    with pytest.raises(CorruptCheckpointError, match="more storages than file bytes"):
        rebuild_over(description, b"\0" * 1000)


def test_an_expanded_device_tensor_is_bounded_by_the_file(tmp_path: Path) -> None:
    """torch's own ``_rebuild_device_tensor_from_cpu_tensor`` over a stride-0 view: a few
    hundred bytes of file become numel elements. Loaded like torch up to 2x the file +
    64 MiB; beyond that refused (a 1.5 KB file asking for 1 GB)."""
    import pickle

    def checkpoint(n: int) -> Path:
        class Dev:
            def __reduce__(self) -> tuple[object, ...]:
                t = torch.zeros(1, dtype=torch.uint8).expand(n)
                rebuild = torch._utils._rebuild_device_tensor_from_cpu_tensor
                return (rebuild, (t, torch.float32, "cpu", False))

        path = tmp_path / f"dev{n}.pt"
        torch.save({"x": Dev()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
        return path

    small = torch.load(checkpoint(1 << 20))["x"]
    assert small.shape == (1 << 20,) and small.dtype == torch.float32 and not small.any()
    with pytest.raises(CorruptCheckpointError, match="device tensor too large"):
        torch.load(checkpoint(1 << 28))


def test_only_validated_fields_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileid, "SETTLE_NS", 0)  # a file just written counts as settled
    kept = sandbox_load._kept
    kept.clear()
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, path)
    torch.load(path)
    ((description, _),) = kept.items.values()
    assert set(json.loads(description)) == {"version", "storages", "nodes", "root"}
    kept.clear()
