"""torch.distributed.checkpoint (issue 13, item 1): the ``.metadata`` file that
``FileSystemReader.read_metadata`` reads with plain ``pickle.load`` is parsed in the sandbox
into dcp's own records; an honest checkpoint loads unchanged (``dcp.load``,
``dcp_to_torch_save``), and every attack -- proven live without sandboxload first -- is
refused with a typed error naming the file, through the call a user makes."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, metadata
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from sandboxload.errors import (
    CorruptCheckpointError,
    NotARegularFileError,
    PickleRefusedError,
    UnsafeGlobalError,
)

from .attacks import TECHNIQUES, payload, torch_zip
from .helpers import Payload, audited, clean_env, run_cli, run_py

# Every technique that is a plain pickle payload (the rest need a torch container).
PICKLE_TECHNIQUES = sorted(TECHNIQUES)


def state() -> dict[str, Any]:
    return {
        "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "bf": torch.linspace(-2, 2, 5).to(torch.bfloat16),
        "ids": torch.tensor([[1, -2], [3, 1 << 40]], dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
        "step": 7,
        "name": "run-1",
        "nested": {"t": torch.full((2, 2), -1.0), "lr": 1e-3, "betas": [0.9, 0.999]},
    }


def template() -> dict[str, Any]:
    """What a caller loads into: same shapes, other values."""
    out: dict[str, Any] = {}
    for k, v in state().items():
        if isinstance(v, torch.Tensor):
            out[k] = torch.zeros_like(v)
        elif isinstance(v, dict):
            out[k] = {
                kk: torch.zeros_like(vv) if isinstance(vv, torch.Tensor) else None
                for kk, vv in v.items()
            }
        else:
            out[k] = None
    return out


def assert_same(got: Any, want: Any) -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype
        assert torch.equal(got, want)
    elif isinstance(want, dict):
        assert set(got) == set(want)
        for k in want:
            assert_same(got[k], want[k])
    else:
        assert got == want


def save(folder: Path, sd: dict[str, Any] | None = None) -> Path:
    with warnings.catch_warnings():  # "torch.distributed is disabled": one process, intended
        warnings.simplefilter("ignore")
        dcp.save(state() if sd is None else sd, checkpoint_id=str(folder))
    return folder


def load(folder: Path, small: bool = False) -> dict[str, Any]:
    sd = {"w": torch.zeros(3, 4), "step": None} if small else template()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, checkpoint_id=str(folder))
    return sd


def plain_metadata(folder: Path) -> metadata.Metadata:
    """The honest file as pickle itself reads it (only ever run on files this test wrote)."""
    with open(folder / ".metadata", "rb") as f:
        return pickle.load(f)


def write_metadata(folder: Path, meta: metadata.Metadata) -> None:
    (folder / ".metadata").write_bytes(pickle.dumps(meta))


LOAD_EACH = """
import sys, warnings
warnings.simplefilter("ignore")
import torch, torch.distributed.checkpoint as dcp
for folder in sys.argv[1:]:
    try:
        dcp.load({"w": torch.zeros(3, 4), "step": None}, checkpoint_id=folder)
    except BaseException as exc:  # dcp's CheckpointException is a BaseException
        print(folder, type(exc).__name__)
"""


def load_each_without_sandboxload(folders: list[Path]) -> None:
    proc = run_py(LOAD_EACH.replace("sys.argv[1:]", repr([str(f) for f in folders])))
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- honest checkpoints ------------------------------------------------------------------


def test_an_honest_checkpoint_loads_unchanged(tmp_path: Path, audit_log: Path) -> None:
    ck = save(tmp_path / "ck")
    assert_same(load(ck), state())
    meta = FileSystemReader(str(ck)).read_metadata()
    plain = plain_metadata(ck)
    assert type(meta) is metadata.Metadata
    assert meta.state_dict_metadata == plain.state_dict_metadata
    assert meta.storage_data == plain.storage_data
    assert list(meta.storage_data) == list(plain.storage_data)
    assert meta.planner_data == plain.planner_data and meta.version == plain.version
    assert meta.storage_meta is not None and plain.storage_meta is not None
    assert meta.storage_meta.checkpoint_id == plain.storage_meta.checkpoint_id
    assert meta.storage_meta.save_id == plain.storage_meta.save_id
    lines = [e for e in audited(audit_log) if e["file"] == str(ck / ".metadata")]
    assert lines and {(e["api"], e["route"], e["decision"]) for e in lines} == {
        ("torch.distributed.checkpoint", "sandbox", "loaded")
    }
    # The tensor and byte records went through the patched torch.load, into the sandbox.
    assert {e["route"] for e in audited(audit_log) if e["api"] == "torch.load"} == {"sandbox"}


def test_dcp_to_torch_save_converts_unchanged(tmp_path: Path, audit_log: Path) -> None:
    ck = save(tmp_path / "ck")
    out = tmp_path / "flat.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(str(ck), str(out))
    assert_same(torch.load(out), state())
    assert any(e["file"] == str(ck / ".metadata") for e in audited(audit_log))


# --- attacks -----------------------------------------------------------------------------


def payload_folders(
    tmp_path: Path, honest: Path, techniques: list[str] = PICKLE_TECHNIQUES
) -> dict[str, tuple[Path, Path]]:
    """One checkpoint folder per technique: honest data, a payload ``.metadata``."""
    out = {}
    for i, technique in enumerate(techniques):
        folder = tmp_path / f"evil{i}"
        folder.mkdir()
        (folder / "__0_0.distcp").write_bytes((honest / "__0_0.distcp").read_bytes())
        canary = tmp_path / f"canary{i}"
        (folder / ".metadata").write_bytes(payload(technique, canary))
        out[technique] = (folder, canary)
    return out


def test_payload_metadata_is_refused_by_dcp_load(tmp_path: Path, sandboxed: None) -> None:
    honest = save(tmp_path / "ck", {"w": torch.ones(3, 4), "step": 1})
    folders = payload_folders(tmp_path, honest)
    load_each_without_sandboxload([f for f, _ in folders.values()])
    live = {t for t, (_, canary) in folders.items() if canary.exists()}
    assert live == set(folders), f"not live without sandboxload: {set(folders) - live}"
    for _, canary in folders.values():
        canary.unlink()
    for technique, (folder, canary) in folders.items():
        with pytest.raises((UnsafeGlobalError, CorruptCheckpointError)) as err:
            load(folder)
        assert str(folder / ".metadata") in str(err.value), technique
        assert not canary.exists(), technique


def test_a_payload_inside_real_records_is_refused(tmp_path: Path, sandboxed: None) -> None:
    """A real Metadata whose StorageMeta carries the payload, and the rank-local
    ``__0.metadata`` that dcp falls back to after the global file fails (it catches that
    failure: the refusal must still reach the caller)."""
    ck = save(tmp_path / "ck", {"w": torch.ones(3, 4), "step": 1})
    canary = tmp_path / "CANARY"
    meta = plain_metadata(ck)
    meta.storage_meta = metadata.StorageMeta(save_id=Payload(canary))  # type: ignore[arg-type]
    write_metadata(ck, meta)
    (ck / "__0.metadata").write_bytes(pickle.dumps(Payload(canary)))
    load_each_without_sandboxload([ck])
    assert canary.exists()
    canary.unlink()
    with pytest.raises(UnsafeGlobalError, match=r"posix\.system"):
        load(ck)
    os.unlink(ck / ".metadata")  # now only the rank-local one is there
    with pytest.raises(UnsafeGlobalError, match=r"__0\.metadata"):
        load(ck)
    assert not canary.exists()


def test_a_byte_record_payload_is_refused(tmp_path: Path, sandboxed: None) -> None:
    """dcp reads a non-tensor value with ``torch.load(..., weights_only=False)``: a payload
    there, with honest metadata pointing at it."""
    ck = save(tmp_path / "ck", {"w": torch.ones(3, 4), "step": 1})
    canary = tmp_path / "CANARY"
    byte_record_payload(ck, canary)
    load_each_without_sandboxload([ck])
    assert canary.exists()
    canary.unlink()
    with pytest.raises(UnsafeGlobalError, match=r"read from .*__0_0\.distcp"):
        load(ck, small=True)
    assert not canary.exists()


@pytest.mark.parametrize("how", ["../ in its name", "a linked file", "a linked directory"])
def test_a_data_file_outside_the_checkpoint_is_refused(
    tmp_path: Path, sandboxed: None, how: str
) -> None:
    """``_StorageInfo.relative_path`` is joined to the folder by dcp and opened as it is:
    ``../``, or a link in the folder, reads another checkpoint's (or any file's) bytes into
    the caller's tensors."""
    ck = save(tmp_path / "ck", {"w": torch.ones(3, 4), "step": 1})
    other = save(tmp_path / "other", {"w": torch.full((3, 4), 42.0), "step": 2})
    if how == "../ in its name":
        name = "../other/__0_0.distcp"
    elif how == "a linked file":
        name = "__1_0.distcp"
        (ck / name).symlink_to(other / "__0_0.distcp")
    else:
        name = "shards/__0_0.distcp"
        (ck / "shards").symlink_to(other, target_is_directory=True)
    meta = plain_metadata(ck)
    for key, info in list(meta.storage_data.items()):  # same layout: same offsets there
        meta.storage_data[key] = _StorageInfo(name, info.offset, info.length)
    write_metadata(ck, meta)
    code = (
        "import warnings; warnings.simplefilter('ignore'); import torch, "
        "torch.distributed.checkpoint as dcp; sd = {'w': torch.zeros(3, 4), 'step': None}; "
        f"dcp.load(sd, checkpoint_id={str(ck)!r}); print(int(sd['w'][0, 0]))"
    )
    proc = run_py(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "42", proc.stderr[-2000:]
    says = r"(leaves|leads outside) the checkpoint|as a data file"
    with pytest.raises(CorruptCheckpointError, match=says):
        load(ck, small=True)
    with pytest.raises(CorruptCheckpointError, match=says):
        FileSystemReader(str(ck)).read_metadata()
    code, rows = scan_rows(ck)  # the metadata's own row, by the same rule
    row = rows[str(ck / ".metadata")]  # (a linked directory is an error row of its own: 2)
    assert code in (1, 2) and row["verdict"] == "refused" and re.search(says, row["detail"]), row


def test_loading_selected_keys_does_not_swallow_a_refusal(tmp_path: Path, sandboxed: None) -> None:
    """``_load_state_dict_from_keys`` logs what ``read_metadata`` raises and tries the rank's
    ``__0.metadata``: with a payload as ``.metadata`` and data of the attacker's there, the
    load went on with that data."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    ck = save(tmp_path / "ck", {"w": torch.ones(3, 4), "step": 1})
    (ck / "__0.metadata").write_bytes((ck / ".metadata").read_bytes())
    canary = tmp_path / "CANARY"
    (ck / ".metadata").write_bytes(payload("os.system", canary))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UnsafeGlobalError, match=r"ck/\.metadata"):
            _load_state_dict_from_keys(checkpoint_id=str(ck))
    assert not canary.exists()


Chunk, Size = metadata.ChunkStorageMetadata, torch.Size


def _set_info(meta: Any, fqn: str, **change: Any) -> None:
    (key,) = [k for k in meta.storage_data if k.fqn == fqn]
    info = meta.storage_data[key]
    fields = {**info.__dict__, "transform_descriptors": None, **change}
    meta.storage_data[key] = _StorageInfo(**fields)


def _tensor(meta: Any, size: Size, chunks: list[Any]) -> None:
    tsm = meta.state_dict_metadata["w"]
    tsm.size, tsm.chunks[:] = size, chunks


def _planner(meta: Any, path: tuple[Any, ...]) -> None:
    meta.planner_data["step"] = path


# change -> (how the metadata is changed, what the refusal says)
CORRUPT: dict[str, tuple[Any, str]] = {
    "a list for the tensor table": (
        lambda m: setattr(m, "state_dict_metadata", list(m.state_dict_metadata.values())),
        "state_dict_metadata",
    ),
    "an unknown field": (lambda m: m.__dict__.update(extra=1), "has no field"),
    "a chunk outside its tensor": (
        lambda m: _tensor(m, Size([4, 4]), [Chunk(Size([2, 0]), Size([4, 4]))]),
        "outside its tensor",
    ),
    "a chunk named twice": (
        lambda m: _tensor(m, Size([4, 4]), [Chunk(Size([0, 0]), Size([4, 4]))] * 2),
        "do not tile",
    ),
    "a tensor no chunk covers": (lambda m: _tensor(m, Size([4, 4]), []), "do not tile"),
    "overlapping chunks": (  # the volumes add up, yet row 3 is never read
        lambda m: _tensor(
            m, Size([4, 4]), [Chunk(Size([0, 0]), Size([2, 4])), Chunk(Size([1, 0]), Size([2, 4]))]
        ),
        "overlap",
    ),
    "a 3 GiB tensor from a small file": (
        lambda m: _tensor(m, Size([3 << 28, 4]), [Chunk(Size([0, 0]), Size([4, 4]))]),
        "do not tile",
    ),
    "tensors larger than what is stored": (  # one chunk tiles 64 GiB; the file holds 1 KB
        lambda m: _tensor(m, Size([1 << 34, 1]), [Chunk(Size([0, 0]), Size([1 << 34, 1]))]),
        "only .* are stored",
    ),
    "a nested path in planner_data": (lambda m: _planner(m, ("step", ("x",))), "planner_data"),
    "a huge list index in planner_data": (
        lambda m: _planner(m, ("step", 10**12)),
        "planner_data list index",
    ),
    "a 50,000-element planner_data path": (
        lambda m: _planner(m, ("step",) * 50_000),
        "planner_data path",
    ),
    "a compressed record": (
        lambda m: _set_info(m, "w", transform_descriptors=["stream.zstd/1"]),
        "transform extensions",
    ),
    "a record past the end of its file": (
        lambda m: _set_info(m, "w", length=1 << 60),
        "past the end of the file",
    ),
}


@pytest.mark.parametrize("change", sorted(CORRUPT))
def test_records_that_do_not_fit_dcp_are_corrupt(
    tmp_path: Path, sandboxed: None, change: str
) -> None:
    """Each from an attack review: unchecked, these crashed the process (a tuple nested a
    million deep, hashed by dcp), grew it without bound (a list index of 10**12, a path
    joined prefix by prefix, a zstd bomb, a 2**60-byte read), wrote 3 GiB from 1 KB, or read
    each chunk thousands of times."""
    ck = save(tmp_path / "ck", {"w": torch.ones(4, 4), "step": 1})
    meta = plain_metadata(ck)
    alter, says = CORRUPT[change]
    alter(meta)
    write_metadata(ck, meta)
    with pytest.raises(CorruptCheckpointError, match=r"\.metadata") as err:
        load(ck, small=True)
    assert re.search(says, str(err.value)), err.value


def test_a_class_outside_the_table_is_an_unsafe_global(tmp_path: Path, sandboxed: None) -> None:
    from torch.distributed.checkpoint.planner import SavePlan

    ck = save(tmp_path / "ck", {"w": torch.ones(3, 4), "step": 1})
    meta = plain_metadata(ck)
    meta.planner_data = SavePlan(items=[])
    write_metadata(ck, meta)
    with pytest.raises(UnsafeGlobalError, match="SavePlan"):
        load(ck)


def test_other_formats_and_special_files(tmp_path: Path, sandboxed: None) -> None:
    ck = save(tmp_path / "ck", {"w": torch.ones(3, 4), "step": 1})
    buf = io.BytesIO()
    torch.save({"a": 1}, buf)
    (ck / ".metadata").write_bytes(buf.getvalue())  # a torch zip where dcp expects a pickle
    with pytest.raises(CorruptCheckpointError, match="not the pickle"):
        load(ck)
    fifo = save(tmp_path / "fifo", {"w": torch.ones(3, 4), "step": 1})
    os.unlink(fifo / ".metadata")
    os.mkfifo(fifo / ".metadata")
    # In a child with a deadline: a regression would block on open() for ever.
    code = (
        "import warnings; warnings.simplefilter('ignore'); import sandboxload; "
        "sandboxload.activate(); import torch, torch.distributed.checkpoint as dcp; "
        f"dcp.load({{'w': torch.zeros(3, 4), 'step': None}}, checkpoint_id={str(fifo)!r})"
    )
    proc = run_py(code, timeout=120)
    assert proc.returncode != 0
    assert NotARegularFileError.__name__ in proc.stderr and "FIFO" in proc.stderr


def test_pickle_policies_apply(tmp_path: Path) -> None:
    ck = save(tmp_path / "ck", {"w": torch.ones(3, 4), "step": 1})
    code = (
        "import warnings; warnings.simplefilter('ignore'); import sandboxload; "
        "sandboxload.activate(); import torch, torch.distributed.checkpoint as dcp; "
        "sd = {'w': torch.zeros(3, 4), 'step': None}; "
        f"dcp.load(sd, checkpoint_id={str(ck)!r}); print(sd['step'])"
    )
    log = tmp_path / "audit.jsonl"
    refused = run_py(code, env=clean_env(SANDBOXLOAD_PICKLE="refuse"))
    assert refused.returncode != 0
    assert PickleRefusedError.__name__ in refused.stderr and ".metadata" in refused.stderr
    allowed = run_py(
        code, env=clean_env(SANDBOXLOAD_PICKLE="allow", SANDBOXLOAD_AUDIT_LOG=str(log))
    )
    assert allowed.returncode == 0 and allowed.stdout.strip() == "1", allowed.stderr[-2000:]
    entry = next(e for e in audited(log) if e["file"] == str(ck / ".metadata"))
    assert (entry["route"], entry["decision"]) == ("in-process-pickle", "allowed")


def record_outside_data_files(ck: Path, where: str, canary: Path) -> None:
    """The value ``extra`` stored as a text (protocol-0) pickle in ``where``: another file of
    the folder, or ``.metadata`` itself, after its own STOP."""
    evil = b"cos\nsystem\n(S'touch " + str(canary).encode() + b"'\ntR."
    meta = plain_metadata(ck)
    (key,) = [k for k in meta.storage_data if k.fqn == "extra"]
    if where != ".metadata":
        (ck / where).write_bytes(evil)
        meta.storage_data[key] = _StorageInfo(where, 0, len(evil))
        write_metadata(ck, meta)
        return
    offset = 0
    while True:  # the record starts at the metadata's own end
        meta.storage_data[key] = _StorageInfo(where, offset, len(evil))
        body = pickle.dumps(meta)
        if len(body) == offset:
            break
        offset = len(body)
    (ck / ".metadata").write_bytes(body + evil)


@pytest.mark.parametrize("where", [".metadata", "NOTES.md"])
def test_a_record_outside_a_distcp_file_is_refused(
    tmp_path: Path, sandboxed: None, where: str
) -> None:
    """From an attack review of scan: records were checked only in ``*.distcp`` files, so a
    record in ``.metadata`` (after its STOP) or in a text file passed scan, and dcp.load
    without sandboxload ran it. dcp writes records only to ``__<rank>_<n>.distcp``."""
    ck = save(tmp_path / "ck", {"w": torch.ones(3), "extra": "hello"})
    canary = tmp_path / "CANARY"
    record_outside_data_files(ck, where, canary)
    code = (
        "import warnings; warnings.simplefilter('ignore'); import torch, "
        "torch.distributed.checkpoint as dcp\ntry:\n dcp.load({'w': torch.zeros(3), "
        f"'extra': 'x'}}, checkpoint_id={str(ck)!r})\nexcept BaseException: pass"
    )
    proc = run_py(code)
    assert proc.returncode == 0 and canary.exists(), proc.stderr[-2000:]
    canary.unlink()
    with pytest.raises(CorruptCheckpointError, match=rf"names {re.escape(repr(where))} as a data"):
        dcp.load({"w": torch.zeros(3), "extra": "x"}, checkpoint_id=str(ck))
    code, rows = scan_rows(ck)
    assert code == 1
    row = rows[str(ck / ".metadata")]
    assert row["verdict"] == "refused" and "as a data file" in row["detail"], row
    assert row["rule"] == "weights-refused"  # the rule of any bad metadata
    assert rows[str(ck / "__0_0.distcp")]["verdict"] == "refused"
    assert not canary.exists()


def test_scan_parses_a_record_named_many_times_once(tmp_path: Path) -> None:
    """From an attack review: a metadata naming one record 300 times cost scan 300 sandbox
    round trips (5,000: 130 s). Identical records count once; records that overlap
    partially are not what dcp writes, and are refused by scan and at run time alike."""
    ck = save(tmp_path / "ck", {"w": torch.ones(3)})
    meta = plain_metadata(ck)
    ((_key, info),) = meta.storage_data.items()
    for i in range(300):
        meta.storage_data[metadata.MetadataIndex("w", Size([i + 1]))] = info
    write_metadata(ck, meta)
    code, rows = scan_rows(ck)
    assert code == 0, rows
    assert "dcp data: 1 record," in rows[str(ck / "__0_0.distcp")]["detail"]
    assert "1 record in 1 data file" in rows[str(ck / ".metadata")]["detail"]
    load_w = (
        "import warnings; warnings.simplefilter('ignore'); import sandboxload; "
        "sandboxload.activate(); import torch, torch.distributed.checkpoint as dcp; "
        f"sd = {{'w': torch.zeros(3)}}; dcp.load(sd, checkpoint_id={str(ck)!r}); "
        "print(int(sd['w'].sum()))"
    )
    proc = run_py(load_w)  # duplicates load at run time too
    assert proc.returncode == 0 and proc.stdout.strip() == "3", proc.stderr[-2000:]
    shifted = _StorageInfo(info.relative_path, info.offset + 1, info.length)
    meta.storage_data[metadata.MetadataIndex("w", Size([0]))] = shifted
    write_metadata(ck, meta)
    code, rows = scan_rows(ck)
    assert code == 1
    for name in (".metadata", "__0_0.distcp"):
        row = rows[str(ck / name)]
        assert row["verdict"] == "refused" and "overlap" in row["detail"], row
    says = "two records of '__0_0.distcp' overlap"
    proc = run_py(load_w)
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr[-2000:]


def byte_record_payload(ck: Path, canary: Path) -> None:
    """Honest metadata pointing a non-tensor value at a payload record appended to the data
    file (dcp reads such values with ``torch.load(..., weights_only=False)``)."""
    evil = torch_zip(payload("os.system", canary))
    data = (ck / "__0_0.distcp").read_bytes()
    (ck / "__0_0.distcp").write_bytes(data + evil)
    meta = plain_metadata(ck)
    (key,) = [k for k in meta.storage_data if k.fqn == "step"]
    meta.storage_data[key] = _StorageInfo("__0_0.distcp", len(data), len(evil))
    write_metadata(ck, meta)


def scan_rows(*paths: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    proc = run_cli("scan", "--json", *map(str, paths))
    return proc.returncode, {r["file"]: r for r in map(json.loads, proc.stdout.splitlines())}


def test_scan_checks_a_checkpoint_as_dcp_reads_it(tmp_path: Path) -> None:
    """The gate judges ``.metadata`` (and a rank's ``__N.metadata``) as dcp loads it, and a
    ``.distcp`` data file record by record, at the offsets the metadata names: an honest
    checkpoint passes, a payload in either is refused."""
    ck = save(tmp_path / "ck")
    code, rows = scan_rows(ck)
    assert code == 0, rows
    assert {(Path(f).name, r["verdict"]) for f, r in rows.items()} == {
        (".metadata", "ok"),
        ("__0_0.distcp", "ok"),
    }
    leaves = [*state().values(), *state()["nested"].values()]
    tensors = sum(isinstance(v, torch.Tensor) for v in leaves)
    values = sum(not isinstance(v, (torch.Tensor, dict)) for v in leaves)
    detail = rows[str(ck / "__0_0.distcp")]["detail"]
    assert f"{tensors + values} records" in detail and f"{tensors} storages" in detail
    canary = tmp_path / "CANARY"
    (ck / "__3.metadata").write_bytes(payload("os.system", canary))
    code, rows = scan_rows(ck)
    assert code == 1
    assert rows[str(ck / "__3.metadata")]["verdict"] == "refused"
    assert "UnsafeGlobalError" in rows[str(ck / "__3.metadata")]["detail"]
    evil = save(tmp_path / "evil", {"w": torch.ones(3, 4), "step": 1})
    byte_record_payload(evil, canary)
    code, rows = scan_rows(evil)
    assert code == 1
    row = rows[str(evil / "__0_0.distcp")]
    assert row["verdict"] == "refused" and "UnsafeGlobalError" in row["detail"], row
    assert rows[str(evil / ".metadata")]["verdict"] == "ok"  # the metadata itself is honest
    assert not canary.exists()


def test_a_pinned_checkpoint_loads_and_a_changed_byte_is_refused(tmp_path: Path) -> None:
    """Under a manifest, the metadata is pinned as a file and each data file as a whole
    (dcp hands its records over as in-memory slices), then read from a sealed copy."""
    ck = save(tmp_path / "ck", {"w": torch.ones(3, 4), "step": 1})
    manifest = tmp_path / "SHA256SUMS"
    pinned = run_cli("pin", "--manifest", str(manifest), str(ck))
    assert pinned.returncode == 0, pinned.stderr
    assert {Path(x.split()[1]).name for x in manifest.read_text().splitlines()} == {
        ".metadata",
        "__0_0.distcp",
    }
    code = (
        "import warnings; warnings.simplefilter('ignore'); import sandboxload; "
        "sandboxload.activate(); import torch, torch.distributed.checkpoint as dcp; "
        "sd = {'w': torch.zeros(3, 4), 'step': None}; "
        f"dcp.load(sd, checkpoint_id={str(ck)!r}); print(int(sd['w'].sum()), sd['step'])"
    )
    env = clean_env(SANDBOXLOAD_MANIFEST=str(manifest))
    ok = run_py(code, env=env)
    assert ok.returncode == 0 and ok.stdout.split() == ["12", "1"], ok.stderr[-2000:]
    data = bytearray((ck / "__0_0.distcp").read_bytes())
    data[-1] ^= 1  # a byte of the last record
    (ck / "__0_0.distcp").write_bytes(bytes(data))
    changed = run_py(code, env=env)
    assert changed.returncode != 0
    assert "HashMismatchError" in changed.stderr and "__0_0.distcp" in changed.stderr
    assert "CheckpointException" not in changed.stderr.strip().splitlines()[-1]
