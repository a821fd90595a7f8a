"""A pin is a statement about a path (issue 10, class 1): whatever route turns a weight file
into bytes or a stream, the bytes are checked against the pin of the file they came from.

The attack: two pinned models, A and B; the folder of A now holds B's (pinned) weights. By
path, A's pin refuses them. Before this fix, any route that handed the loader *bytes* --
transformers 5 reads shards itself when a folder sets ``disable_mmap`` through
sentence-transformers' ``model_kwargs`` -- accepted any digest listed anywhere in the
manifest, and the audit line said ``<bytes>``.

Runs on both stacks (on transformers 4.x, which has no in-memory route, the same attacks
meet the by-path route).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch
import transformers

from sandboxload import pinning
from sandboxload.errors import (
    HashMismatchError,
    ModelFolderError,
    UnknownOriginError,
    UnpinnedFileError,
)

from .helpers import audited, copy_model, sharded_copy

pytestmark = pytest.mark.usefixtures("audit_log")
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def _in_memory_reads(folder: Path) -> None:
    """Ask, from inside the folder, for shards read into memory instead of mapped. Only
    transformers 5 has the switch (``disable_mmap``); on 4.x every shard is opened by path,
    and the same tests check that route."""
    if not TRANSFORMERS_5:
        return
    config = folder / "sentence_bert_config.json"
    data = json.loads(config.read_text())
    data["model_kwargs"] = {"disable_mmap": True}
    config.write_text(json.dumps(data))


SHARD = "model-00002-of-00003.safetensors"


@pytest.fixture
def swapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Sharded folders A and B (other weights), all pinned; then A's second shard replaced
    by B's pinned one. (transformers 5 reads the first shard's metadata through
    ``safe_open``, by path; every later shard only as bytes when ``disable_mmap`` is set.)"""
    a, b = sharded_copy(tmp_path / "A", "safetensors"), sharded_copy(tmp_path / "B", "safetensors")
    for shard in sorted(b.glob("*.safetensors")):
        halved = {k: v * 0.5 for k, v in safetensors.torch.load_file(str(shard)).items()}
        safetensors.torch.save_file(halved, str(shard), metadata={"format": "pt"})
    manifest = tmp_path / "SHA256SUMS"
    shards = [str(p) for p in [*a.glob("*.safetensors"), *b.glob("*.safetensors")]]
    pinning.write_manifest(shards, str(manifest))
    (a / SHARD).write_bytes((b / SHARD).read_bytes())
    _in_memory_reads(a)
    monkeypatch.setenv("SANDBOXLOAD_MANIFEST", str(manifest))
    return a, b


def _refused_as_a(exc: BaseException, a: Path) -> None:
    assert isinstance(exc, HashMismatchError), repr(exc)
    assert exc.file == str(a / SHARD)


def test_the_swap_is_live_without_a_manifest(
    swapped: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: unpinned, folder A really serves B's weights (what the pin must stop)."""
    from sentence_transformers import SentenceTransformer

    a, b = swapped
    monkeypatch.delenv("SANDBOXLOAD_MANIFEST")
    got = SentenceTransformer(str(a), device="cpu")[0].auto_model.state_dict()
    want = safetensors.torch.load_file(str(b / SHARD))
    assert want and all(torch.equal(got[k], v) for k, v in want.items())


def test_sentence_transformer_folder_asking_for_in_memory_reads(
    swapped: tuple[Path, Path], audit_log: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    a, _ = swapped
    with pytest.raises(Exception) as info:
        SentenceTransformer(str(a), device="cpu")
    cause: BaseException | None = info.value
    while cause is not None and not isinstance(cause, HashMismatchError):
        cause = cause.__cause__ or cause.__context__
    _refused_as_a(cause or info.value, a)
    assert all(r["file"] != "<bytes>" for r in audited(audit_log))


@pytest.mark.skipif(not TRANSFORMERS_5, reason="disable_mmap is a transformers 5 argument")
def test_from_pretrained_with_disable_mmap(swapped: tuple[Path, Path], audit_log: Path) -> None:
    from transformers import AutoModel

    a, _ = swapped
    with pytest.raises(HashMismatchError) as info:
        AutoModel.from_pretrained(str(a), disable_mmap=True)
    _refused_as_a(info.value, a)
    last = audited(audit_log)[-1]
    assert last["file"] == str(a / SHARD) and last["decision"] == "refused"


@pytest.mark.parametrize("route", ["load_file", "safe_open", "torch.load", "file object"])
def test_by_path_and_by_file_object(swapped: tuple[Path, Path], route: str) -> None:
    a, _ = swapped
    path = str(a / SHARD)
    with pytest.raises(HashMismatchError) as info:
        if route == "load_file":
            safetensors.torch.load_file(path)
        elif route == "safe_open":
            safetensors.safe_open(path, "pt")
        elif route == "torch.load":
            torch.load(path)
        else:
            with open(path, "rb") as f:
                torch.load(f)
    _refused_as_a(info.value, a)


def test_honest_in_memory_reads_load_and_name_their_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audit_log: Path
) -> None:
    """The same routes on an honest pinned folder: loaded, every audit line names the file."""
    from sentence_transformers import SentenceTransformer

    a = copy_model(tmp_path / "A")
    _in_memory_reads(a)
    manifest = tmp_path / "SHA256SUMS"
    pinning.write_manifest([str(a / "model.safetensors")], str(manifest))
    monkeypatch.setenv("SANDBOXLOAD_MANIFEST", str(manifest))
    model = SentenceTransformer(str(a), device="cpu")
    assert model.encode(["pinned"]).shape == (1, 384)
    records = audited(audit_log)
    assert records and {r["file"] for r in records} == {str(a / "model.safetensors")}
    if TRANSFORMERS_5:  # the in-memory route was really taken
        assert "safetensors.torch.load" in {r["api"] for r in records}


def _bytes_routes() -> dict[str, object]:
    return {
        "safetensors.torch.load": safetensors.torch.load,
        "safetensors.numpy.load": safetensors.numpy.load,
        "safetensors.deserialize": safetensors.deserialize,
        "torch.load(BytesIO)": lambda data: torch.load(io.BytesIO(data)),
    }


@pytest.mark.parametrize("route", list(_bytes_routes()))
def test_bytes_nobody_can_trace_are_refused_under_a_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audit_log: Path, route: str
) -> None:
    """``safetensors.torch.load(open(p).read())`` from the caller's own code: the bytes carry
    no path, so no pin can be checked; refused (typed) under a manifest, loaded without."""
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"w": torch.arange(4.0)}, str(path))
    load = _bytes_routes()[route]
    with open(path, "rb") as f:
        data = f.read()
    monkeypatch.delenv("SANDBOXLOAD_MANIFEST", raising=False)
    loaded = load(data)  # type: ignore[operator]
    assert loaded is not None
    manifest = tmp_path / "SHA256SUMS"
    pinning.write_manifest([str(path)], str(manifest))  # the very bytes are pinned, by path
    monkeypatch.setenv("SANDBOXLOAD_MANIFEST", str(manifest))
    with pytest.raises(UnknownOriginError) as info:
        load(data)  # type: ignore[operator]
    assert str(manifest) in str(info.value)
    assert audited(audit_log)[-1]["decision"] == "refused"


def test_a_file_object_is_checked_against_the_file_it_is_open_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audit_log: Path
) -> None:
    """Pickle by file object: the descriptor names the file (not a ``name`` anyone can set)."""
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": torch.zeros(3)}, a)
    torch.save({"w": torch.ones(3)}, b)
    manifest = tmp_path / "SHA256SUMS"
    pinning.write_manifest([str(a), str(b)], str(manifest))
    monkeypatch.setenv("SANDBOXLOAD_MANIFEST", str(manifest))
    with open(a, "rb") as f:
        assert torch.equal(torch.load(f)["w"], torch.zeros(3))
    assert audited(audit_log)[-1]["file"] == str(a)

    class Renamed(io.BufferedReader):
        pass

    with Renamed(io.FileIO(b)) as f:  # open on b; claims to be a
        f.raw.name = str(a)  # type: ignore[misc]
        assert torch.equal(torch.load(f)["w"], torch.ones(3))  # b's bytes, b's pin
    assert audited(audit_log)[-1]["file"] == str(b)
    a.write_bytes(b.read_bytes())  # a now holds b's pinned bytes
    with open(a, "rb") as f, pytest.raises(HashMismatchError) as info:
        torch.load(f)
    assert info.value.file == str(a)


def test_safe_open_handle_reads_the_descriptor_not_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audit_log: Path
) -> None:
    """safetensors' ``_safe_open_handle`` reopens the file by the handle's ``name``: live
    (next test), a file swapped in after the caller opened the handle is what loads."""
    path, other = tmp_path / "w.safetensors", tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path))
    with open(path, "rb") as f:
        with safetensors._safe_open_handle(f, "pt") as g:
            assert torch.equal(g.get_tensor("w"), torch.zeros(2))
        assert audited(audit_log)[-1]["file"] == str(path)
        safetensors.torch.save_file({"w": torch.ones(2)}, str(other))
        os.replace(other, path)  # swapped after the open
        with safetensors._safe_open_handle(f, "pt") as g:
            assert torch.equal(g.get_tensor("w"), torch.zeros(2))  # the opened file's bytes
        manifest = tmp_path / "SHA256SUMS"
        pinning.write_manifest([str(path)], str(manifest))
        monkeypatch.setenv("SANDBOXLOAD_MANIFEST", str(manifest))
        with pytest.raises(UnknownOriginError):  # its file is gone: no pin can apply
            safetensors._safe_open_handle(f, "pt")


def test_safe_open_handle_by_name_is_live_unprotected(tmp_path: Path) -> None:
    """The control for the test above, in a process without sandboxload."""
    from .helpers import run_py

    path, other = tmp_path / "w.safetensors", tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path))
    safetensors.torch.save_file({"w": torch.ones(2)}, str(other))
    code = f"""
import os, safetensors
f = open({str(path)!r}, "rb")
os.replace({str(other)!r}, {str(path)!r})
with safetensors._safe_open_handle(f, "pt") as g:
    print(g.get_tensor("w").tolist())
"""
    proc = run_py(code)  # no sandboxload in this process
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1.0, 1.0]"  # the swapped-in file, resolved by name


def test_numpy_bytes_keep_working_without_a_manifest(tmp_path: Path) -> None:
    data = safetensors.numpy.save({"x": np.arange(3, dtype=np.float32)})
    assert safetensors.numpy.load(data)["x"].tolist() == [0.0, 1.0, 2.0]


@pytest.fixture
def pinned_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Folders A and B (other weights), both pinned; nothing swapped yet."""
    a, b = copy_model(tmp_path / "A"), copy_model(tmp_path / "B")
    halved = {
        k: v * 0.5 for k, v in safetensors.torch.load_file(str(b / "model.safetensors")).items()
    }
    safetensors.torch.save_file(halved, str(b / "model.safetensors"), metadata={"format": "pt"})
    manifest = tmp_path / "SHA256SUMS"
    pinning.write_manifest(
        [str(a / "model.safetensors"), str(b / "model.safetensors")], str(manifest)
    )
    monkeypatch.setenv("SANDBOXLOAD_MANIFEST", str(manifest))
    return a, b


def _never_loaded_from_b(audit_log: Path, b: Path, since: int) -> None:
    loaded = [r["file"] for r in audited(audit_log)[since:] if r["decision"] == "loaded"]
    assert not [f for f in loaded if os.path.realpath(f).startswith(str(b))], loaded


def test_a_link_with_an_unlisted_name_is_not_checked_as_its_target(
    pinned_pair: tuple[Path, Path], audit_log: Path
) -> None:
    """A's index names a shard that is a link to B's pinned file: the name A's folder uses is
    not pinned, and B's pin does not vouch for it (the lookup resolved it to B's entry)."""
    from sentence_transformers import SentenceTransformer

    a, b = pinned_pair
    (a / "model.safetensors").unlink()
    shard = "model-00001-of-00001.safetensors"
    (a / shard).symlink_to(Path("..", "B", "model.safetensors"))
    keys = safetensors.torch.load_file(str(b / "model.safetensors"))
    index = {"metadata": {}, "weight_map": dict.fromkeys(keys, shard)}
    (a / "model.safetensors.index.json").write_text(json.dumps(index))
    since = len(audited(audit_log)) if audit_log.exists() else 0
    with pytest.raises(UnpinnedFileError):
        SentenceTransformer(str(a), device="cpu")
    with pytest.raises(UnpinnedFileError):
        safetensors.torch.load_file(str(a / shard))
    _never_loaded_from_b(audit_log, b, since)


def _redirect(a: Path, how: str) -> None:
    """Folder A's own files send loading to B: no weight file of A touched."""
    if how == "subfolder":
        config = json.loads((a / "sentence_bert_config.json").read_text())
        config["model_kwargs" if TRANSFORMERS_5 else "model_args"] = {"subfolder": "../B"}
        (a / "sentence_bert_config.json").write_text(json.dumps(config))
        return
    modules = json.loads((a / "modules.json").read_text())
    if how == "linked directory":
        (a / "first").symlink_to(Path("..", "B"))
    modules[0]["path"] = "../B" if how == "modules.json" else "first"
    (a / "modules.json").write_text(json.dumps(modules))


@pytest.mark.parametrize("how", ["modules.json", "subfolder", "linked directory"])
def test_a_folder_cannot_redirect_loading_to_another_pinned_folder(
    pinned_pair: tuple[Path, Path], audit_log: Path, how: str
) -> None:
    """Every weight file loaded while ``SentenceTransformer(A)`` runs lies inside A, after
    resolving directory links (sentence-transformers 6 rejects some ``..`` paths itself)."""
    from sentence_transformers import SentenceTransformer

    a, b = pinned_pair
    _redirect(a, how)
    since = len(audited(audit_log)) if audit_log.exists() else 0
    raised: BaseException | None = None
    try:
        SentenceTransformer(str(a), device="cpu")
    except Exception as exc:  # which refusal depends on the stack
        raised = exc
    _never_loaded_from_b(audit_log, b, since)
    if how == "linked directory" or not TRANSFORMERS_5:  # where the redirect is live
        assert isinstance(raised, ModelFolderError), repr(raised)


def test_the_redirect_is_live_without_sandboxload(pinned_pair: tuple[Path, Path]) -> None:
    """Control: unprotected, the linked-directory folder A serves B's weights."""
    from .helpers import run_py

    a, b = pinned_pair
    _redirect(a, "linked directory")
    code = f"""
import torch, safetensors.torch
from sentence_transformers import SentenceTransformer
got = SentenceTransformer({str(a)!r}, device="cpu")[0].auto_model.state_dict()
want = safetensors.torch.load_file({str(b / "model.safetensors")!r})
print(all(torch.equal(got[k], v) for k, v in want.items() if k in got))
"""
    proc = run_py(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "True"


def test_the_tracked_open_behaves_as_open_for_honest_use(tmp_path: Path) -> None:
    """What transformers' modeling_utils gets as ``open``: the builtin's behaviour for what
    is not a whole binary read of a regular file, a FIFO refused without blocking, and the
    remembered read let go at close."""
    from sandboxload import origins
    from sandboxload.errors import NotARegularFileError

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    with origins.tracked_open(path, "rb", buffering=0) as f:
        assert type(f) is io.FileIO
    with pytest.raises(IsADirectoryError):
        origins.tracked_open(tmp_path, "rb")
    with origins.tracked_open(path) as f:  # text mode: the builtin
        assert f.read() == "abc" * 1000
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFileError):
        origins.tracked_open(fifo, "rb")  # the builtin would block here forever
    with origins.tracked_open(path, "rb") as f:
        data = f.read()
        assert origins.of_bytes(data) == str(path)
        assert f.name == str(path) and f.seek(0) == 0 and f.read(3) == b"abc"
    assert origins.of_bytes(data) is None  # closed: the bytes are no longer held
