"""Policy beyond pickle: hash pinning, format allowlist, offline mode, shared audit log,
one policy file for everything; each through the real loaders."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import safetensors.torch
import torch

from sandboxload import fileid, pinning, policy
from sandboxload.errors import (
    CorruptCheckpointError,
    FormatNotAllowedError,
    HashMismatchError,
    PolicyError,
    UnpinnedFileError,
)
from sandboxload.wording import shown

from .helpers import (
    PY,
    audited,
    clean_env,
    copy_model,
    pickle_copy,
    run_cli,
)

DEPLOYMENT = Path(__file__).parent.parent / "docs" / "deployment.md"


def pin(tmp_path: Path, *paths: Path) -> Path:
    manifest = tmp_path / "SHA256SUMS"
    pinning.write_manifest([str(p) for p in paths], str(manifest))
    return manifest


def flip_a_byte(path: Path, at: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_is_sha256sum_compatible(tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"hello")
    manifest = pin(tmp_path, a)
    proc = subprocess.run(
        ["sha256sum", "-c", str(manifest)], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "a.bin: OK" in proc.stdout


def test_pinned_files_load_and_tampered_or_unlisted_are_refused(
    audit_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkl, st, other = tmp_path / "w.pt", tmp_path / "w.safetensors", tmp_path / "x.pt"
    torch.save({"w": torch.arange(4.0)}, pkl)
    safetensors.torch.save_file({"w": torch.arange(4.0)}, str(st))
    torch.save({"w": torch.ones(1)}, other)
    monkeypatch.setenv("SANDBOXLOAD_MANIFEST", str(pin(tmp_path, pkl, st)))
    assert torch.equal(torch.load(pkl)["w"], torch.arange(4.0))
    assert torch.equal(safetensors.torch.load_file(str(st))["w"], torch.arange(4.0))
    log = audited(audit_log)
    assert [e["decision"] for e in log] == ["loaded", "loaded"]
    assert log[0]["sha256"] == pinning.digest_fd(os.open(pkl, os.O_RDONLY))
    with pytest.raises(UnpinnedFileError, match="not listed in the manifest"):
        torch.load(other)
    flip_a_byte(st)
    with pytest.raises(HashMismatchError, match="SHA-256"):
        safetensors.torch.load_file(str(st))
    flip_a_byte(pkl, at=100)
    with pytest.raises(HashMismatchError):
        torch.load(pkl)
    import io

    with pytest.raises(UnpinnedFileError):  # an in-memory stream must match a pinned digest
        torch.load(io.BytesIO(other.read_bytes()))
    assert [e["decision"] for e in audited(audit_log)][2:] == ["refused"] * 4


def test_pinned_model_through_sentence_transformers(
    audit_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentence_transformers import SentenceTransformer

    model = copy_model(tmp_path / "m")
    monkeypatch.setenv("SANDBOXLOAD_MANIFEST", str(pin(tmp_path, model / "model.safetensors")))
    SentenceTransformer(str(model), device="cpu")
    flip_a_byte(model / "model.safetensors")
    with pytest.raises(HashMismatchError):
        SentenceTransformer(str(model), device="cpu")


def test_digest_cache_is_per_file_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A settled file is hashed once; a file changed in the last two seconds is hashed every
    time (a rewrite within the same tick of the file system's clock keeps its identity: a
    cached digest would have passed the new bytes -- CI once loaded a swapped shard so)."""
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(1 << 20))
    calls: list[int] = []
    real = os.preadv

    def counting(fd: int, buffers: list[bytearray], offset: int) -> int:
        calls.append(offset)
        return real(fd, buffers, offset)

    def digest() -> tuple[str, int]:
        before = len(calls)
        fd = os.open(path, os.O_RDONLY)
        try:
            return pinning.digest_fd(fd), len(calls) - before
        finally:
            os.close(fd)

    monkeypatch.setattr(pinning.os, "preadv", counting)
    first, reads = digest()
    assert reads and digest() == (first, reads)  # just written: hashed again, not cached
    path.write_bytes(os.urandom(1 << 20))  # same size, most likely the same clock tick
    second, reads = digest()
    assert second != first and reads
    monkeypatch.setattr(fileid, "SETTLE_NS", 0)  # as if written long ago
    assert digest()[1] and digest() == (second, 0)  # settled: hashed once


def test_hugging_face_cache_blob_is_checked_by_its_name(audit_log: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub" / "models--org--m"
    blob_dir, snap = cache / "blobs", cache / "snapshots" / "abc123"
    blob_dir.mkdir(parents=True)
    snap.mkdir(parents=True)
    src = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"w": torch.ones(3)}, str(src))
    fd = os.open(src, os.O_RDONLY)
    digest = pinning.digest_fd(fd)
    os.close(fd)
    blob = blob_dir / digest
    blob.write_bytes(src.read_bytes())
    (snap / "model.safetensors").symlink_to(blob)
    assert torch.equal(
        safetensors.torch.load_file(str(snap / "model.safetensors"))["w"], torch.ones(3)
    )
    flip_a_byte(blob)
    with pytest.raises(HashMismatchError, match="Hugging Face cache blob"):
        safetensors.torch.load_file(str(snap / "model.safetensors"))


@pytest.mark.parametrize("kind", ["safetensors", "pickle"])
def test_a_cache_blob_that_links_elsewhere_is_checked_by_its_name(
    audit_log: Path, tmp_path: Path, kind: str
) -> None:
    """``blobs/<sha256>`` is the cache's promise, whatever the blob entry points to: a blob
    that is itself a link to a file outside ``blobs/`` is still checked by its name (it was
    not: the check followed realpath to the outside file, which has no blob name)."""
    cache = tmp_path / "hub" / "models--org--m"
    blob_dir, snap = cache / "blobs", cache / "snapshots" / "abc123"
    blob_dir.mkdir(parents=True)
    snap.mkdir(parents=True)
    honest, outside = tmp_path / "honest", tmp_path / "elsewhere" / "w"
    outside.parent.mkdir()
    name = "model.safetensors" if kind == "safetensors" else "pytorch_model.bin"
    for path, value in ((honest, 1.0), (outside, 2.0)):
        if kind == "safetensors":
            safetensors.torch.save_file({"w": torch.full((3,), value)}, str(path))
        else:
            torch.save({"w": torch.full((3,), value)}, path)
    fd = os.open(honest, os.O_RDONLY)
    digest = pinning.digest_fd(fd)
    os.close(fd)
    (blob_dir / digest).symlink_to(outside)  # the blob named for honest bytes holds others
    (snap / name).symlink_to(Path("..", "..", "blobs", digest))
    load = safetensors.torch.load_file if kind == "safetensors" else torch.load
    with pytest.raises(HashMismatchError, match="Hugging Face cache blob"):
        load(str(snap / name))
    (blob_dir / digest).unlink()
    (blob_dir / digest).symlink_to(honest)  # a blob that links to the right bytes is fine
    assert torch.equal(load(str(snap / name))["w"], torch.ones(3))


def test_safetensors_only_allowlist(
    audit_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("SANDBOXLOAD_FORMATS", "safetensors")
    renamed = tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(2)}, renamed)  # a pickle named like safetensors
    for load in (lambda: safetensors.torch.load_file(str(renamed)), lambda: torch.load(renamed)):
        with pytest.raises(FormatNotAllowedError, match=r"torch-zip.*env SANDBOXLOAD_FORMATS"):
            load()
    # The message names where the allowlist was set: here a policy file, not the env.
    monkeypatch.delenv("SANDBOXLOAD_FORMATS")
    toml = tmp_path / "policy.toml"
    toml.write_text('formats = ["safetensors"]\n')
    monkeypatch.setenv("SANDBOXLOAD_POLICY", str(toml))
    with pytest.raises(FormatNotAllowedError, match=f"file {re.escape(str(toml))}"):
        torch.load(renamed)
    monkeypatch.delenv("SANDBOXLOAD_POLICY")
    monkeypatch.setenv("SANDBOXLOAD_FORMATS", "safetensors")
    with pytest.raises(FormatNotAllowedError):
        SentenceTransformer(str(pickle_copy(tmp_path / "pkl")), device="cpu")
    SentenceTransformer(str(copy_model(tmp_path / "st")), device="cpu")  # still loads
    log = audited(audit_log)
    assert [e["decision"] for e in log if e["file"] == str(renamed)] == ["refused"] * 3
    assert log[-1]["decision"] == "loaded" and log[-1]["format"] == "safetensors"


def test_offline_mode_fails_clearly_without_touching_the_network(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, sys\n"
        "events = []\n"
        "NET = {'socket.connect', 'socket.getaddrinfo', 'socket.gethostbyname', 'socket.sendto'}\n"
        "sys.addaudithook(lambda e, a: events.append(e) if e in NET else None)\n"
        "try:\n"
        "    from sentence_transformers import SentenceTransformer\n"
        "    SentenceTransformer('sentence-transformers/all-MiniLM-L6-v2')\n"
        "    out = 'loaded'\n"
        "except Exception as exc:\n"
        "    out = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps({'outcome': out, 'network': events}))\n"
    )
    env = clean_env(SANDBOXLOAD="1", SANDBOXLOAD_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(var, None)
    proc = subprocess.run([PY, str(probe)], env=env, capture_output=True, text=True, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["outcome"].startswith("OfflineError: sandboxload offline mode"), result
    assert result["network"] == []


def test_two_processes_share_one_audit_log(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    code = (
        "import sys\nfrom sandboxload import audit\n"
        "for i in range(400):\n"
        "    audit.record(sys.argv[1], file='x' * 3000, n=i, who=sys.argv[2])\n"
    )
    procs = [
        subprocess.Popen([PY, "-c", code, str(log), who], env=clean_env()) for who in ("a", "b")
    ]
    assert [p.wait(120) for p in procs] == [0, 0]
    lines = log.read_text().splitlines()
    assert len(lines) == 800
    records = [json.loads(line) for line in lines]  # every line whole and valid
    assert sorted(r["n"] for r in records if r["who"] == "a") == list(range(400))
    assert {"time", "pid", "file"} <= set(records[0])


def test_documented_production_policy_is_complete_and_valid(tmp_path: Path) -> None:
    """The documented production policy sets every setting, and resolves as written."""
    text = DEPLOYMENT.read_text()
    block = re.search(r"```toml\n(# production.*?)```", text, re.S)
    assert block is not None
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(block.group(1))
    (tmp_path / "SHA256SUMS").write_text("")
    import tomllib

    keys = set(tomllib.loads(block.group(1)))
    assert keys == {s.name for s in policy.SETTINGS}
    pol = policy.resolve({"SANDBOXLOAD_POLICY": str(policy_file)})
    assert pol.formats == ("safetensors",) and pol.offline and pol.pickle == "refuse"
    assert pol.manifest is not None and Path(pol.manifest).is_absolute()


def test_wrapper_options_for_the_gates(tmp_path: Path) -> None:
    code = (
        "import os; print(os.environ['SANDBOXLOAD_MANIFEST'], "
        "os.environ['SANDBOXLOAD_FORMATS'], os.environ['HF_HUB_OFFLINE'])"
    )
    (tmp_path / "m.txt").write_text("")
    proc = run_cli(
        *("--manifest", "m.txt", "--formats", "safetensors", "--offline", "on"),
        *(PY, "-c", code),
        cwd=tmp_path,
    )
    assert proc.stdout.split() == [str(tmp_path / "m.txt"), "safetensors", "1"], proc.stderr


def test_pin_and_verify_subcommands(tmp_path: Path) -> None:
    model = copy_model(tmp_path / "m")
    manifest = tmp_path / "SUMS"

    proc = run_cli("pin", "--manifest", str(manifest), str(model))
    assert proc.returncode == 0 and "pinned 1 file in" in proc.stdout, proc.stderr
    assert manifest.read_text().endswith("  m/model.safetensors\n")
    assert run_cli("verify", "--manifest", str(manifest)).returncode == 0
    # A weight file added after pinning passes a check of the list alone; named folders are
    # checked for unlisted weight files too.
    torch.save({"w": torch.ones(1)}, model / "pytorch_model.bin")
    assert run_cli("verify", "--manifest", str(manifest)).returncode == 0
    proc = run_cli("verify", "--manifest", str(manifest), str(model))
    assert proc.returncode == 1 and f"UNPINNED {model / 'pytorch_model.bin'}" in proc.stdout
    assert f"OK  {model / 'model.safetensors'}" in proc.stdout
    (model / "pytorch_model.bin").unlink()
    assert run_cli("verify", "--manifest", str(manifest), str(model)).returncode == 0
    flip_a_byte(model / "model.safetensors")
    proc = run_cli("verify", "--manifest", str(manifest))
    assert proc.returncode == 1 and "MISMATCH" in proc.stdout


def test_audit_also_goes_to_the_logger(
    sandboxed: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"w": torch.ones(1)}, str(path))
    with caplog.at_level(logging.INFO, logger="sandboxload.audit"):
        safetensors.torch.load_file(str(path))
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sandboxload.audit"]
    assert records and records[-1]["file"] == str(path)
    assert {"time", "pid", "file", "format", "sha256", "decision", "reason", "bytes", "ms"} <= set(
        records[-1]
    )


def test_a_file_object_is_read_once(
    audit_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes of a file object that are hashed are the bytes that are loaded: it is read
    once (a stream that changes between reads cannot swap pinned bytes for others)."""
    import io

    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    monkeypatch.setenv("SANDBOXLOAD_MANIFEST", str(pin(tmp_path, path)))
    other = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, other)

    class Shifting(io.BufferedReader):
        """Open on the pinned file; gives its bytes on the first read, others after."""

        reads = 0

        def read(self, size: int | None = -1) -> bytes:
            Shifting.reads += 1
            return super().read(size) if Shifting.reads == 1 else other.getvalue()

    with Shifting(io.FileIO(path)) as f:
        got = torch.load(f)
    assert torch.equal(got["w"], torch.arange(4.0)) and Shifting.reads == 1


def test_torch_safe_globals_admit_plain_data_classes_only(
    sandboxed: None, tmp_path: Path, canary: Path
) -> None:
    """``torch.serialization.safe_globals`` / ``add_safe_globals`` extend torch's allowlist;
    sandboxload honours the classes in it under SANDBOXLOAD_ALLOW_GLOBALS' rule (plain data,
    rebuilt without running code), and never a function -- which torch itself would call."""
    from sandboxload.errors import UnsafeGlobalError
    from sandboxload.patches import registry

    from .helpers import run_py
    from .plain_classes import Touch, TrainConfig, WithSetstate, touch

    path = tmp_path / "cfg.pt"
    torch.save({"cfg": TrainConfig(0.1, [1, 2])}, path)
    with pytest.raises(UnsafeGlobalError):
        torch.load(path)
    with torch.serialization.safe_globals([TrainConfig]):
        got = torch.load(path)
        want = registry.original(registry.TORCH_LOAD)(path, weights_only=True)
    assert type(got["cfg"]) is TrainConfig and vars(got["cfg"]) == vars(want["cfg"])
    setstate = tmp_path / "setstate.pt"
    torch.save({"x": WithSetstate(str(canary))}, setstate)
    with torch.serialization.safe_globals([WithSetstate]), pytest.raises(CorruptCheckpointError):
        torch.load(setstate)  # it has code of its own: not plain data
    evil = tmp_path / "evil.pt"
    torch.save({"x": Touch(str(canary))}, evil)
    proc = run_py(  # live: torch's own loader calls a function its safe globals admit
        "import torch\nfrom tests.plain_classes import touch\n"
        "with torch.serialization.safe_globals([touch]):\n"
        f"    torch.load({str(evil)!r}, weights_only=True)\n",
        env=clean_env(),
        cwd=Path(__file__).parent.parent,
    )
    assert canary.exists(), proc.stderr[-2000:]
    canary.unlink()
    with torch.serialization.safe_globals([touch]), pytest.raises(UnsafeGlobalError):
        torch.load(evil)
    assert not canary.exists()


def test_verify_compares_every_entry_even_of_one_real_file(tmp_path: Path) -> None:
    """A pinned weight file replaced by a link to another pinned file: verify checked each
    real file once and skipped the second name, so the swap passed."""
    model = tmp_path / "m"
    model.mkdir()
    torch.save({"w": torch.ones(2)}, model / "pytorch_model.bin")
    torch.save({"w": torch.full((2,), 9.0)}, model / "another.bin")
    manifest = tmp_path / "SUMS"
    assert run_cli("pin", "--manifest", str(manifest), str(model)).returncode == 0
    (model / "pytorch_model.bin").unlink()
    (model / "pytorch_model.bin").symlink_to("another.bin")
    proc = run_cli("verify", "--manifest", str(manifest), str(model))
    assert proc.returncode == 1, proc.stdout
    assert f"MISMATCH  {model / 'pytorch_model.bin'}" in proc.stdout
    assert f"OK  {model / 'another.bin'}" in proc.stdout


BREAKS = ["\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("brk", BREAKS, ids=[f"U+{ord(b):04X}" for b in BREAKS])
def test_pin_refuses_a_name_that_would_start_another_manifest_line(
    tmp_path: Path, brk: str
) -> None:
    """The attack: a directory named ``z<break><sha256>  m`` made pin write a second line
    pinning m/pytorch_model.bin to the attacker's digest (the last duplicate won), so after a
    weight swap verify passed and a load under the manifest returned the attacker's weights."""
    model = tmp_path / "m"
    model.mkdir()
    torch.save({"w": torch.ones(2)}, model / "pytorch_model.bin")
    forged = model / f"z{brk}{'ab' * 32}  m"
    forged.mkdir()
    (forged / "pytorch_model.bin").write_bytes(b"x")
    manifest = tmp_path / "SUMS"
    manifest.write_text("kept as it was\n")
    proc = run_cli("pin", "--manifest", str(manifest), str(model))
    assert proc.returncode == 2, proc.stdout
    assert "line break" in proc.stderr and shown(str(forged)) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert manifest.read_text() == "kept as it was\n"


def test_a_manifest_listing_a_path_twice_is_refused(
    sandboxed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest is attacker-adjacent input: a path listed twice (the last one won) is a
    policy error for verify and for loads alike, naming the manifest and the path."""
    model = tmp_path / "m"
    model.mkdir()
    weights = model / "pytorch_model.bin"
    torch.save({"w": torch.ones(2)}, weights)
    evil = io.BytesIO()
    torch.save({"w": torch.full((2,), 666.0)}, evil)
    manifest = tmp_path / "SUMS"
    assert run_cli("pin", "--manifest", str(manifest), str(model)).returncode == 0
    forged = f"{hashlib.sha256(evil.getvalue()).hexdigest()}  ./m//pytorch_model.bin\n"
    manifest.write_text(manifest.read_text() + forged)
    weights.write_bytes(evil.getvalue())
    proc = run_cli("verify", "--manifest", str(manifest), str(model))
    assert proc.returncode == 2 and "OK" not in proc.stdout, proc.stdout
    assert str(manifest) in proc.stderr and "twice" in proc.stderr, proc.stderr
    assert "m/pytorch_model.bin" in proc.stderr
    monkeypatch.setenv("SANDBOXLOAD_MANIFEST", str(manifest))
    with pytest.raises(PolicyError, match="twice"):
        torch.load(weights)


def test_verify_reports_linked_directories_and_index_targets(tmp_path: Path) -> None:
    """verify PATH looked for unlisted weight files by suffix, walking no link: a linked
    directory added after pinning and a shard an index names without a weight suffix passed.
    pin pins what a load opens: every file an index names, whatever its suffix."""
    model = tmp_path / "m"
    model.mkdir()
    torch.save({"a": torch.ones(2)}, model / "pytorch_model-00001-of-00001.bin")
    index = model / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "pytorch_model-00001-of-00001.bin"}}))
    manifest = tmp_path / "SUMS"
    assert run_cli("pin", "--manifest", str(manifest), str(model)).returncode == 0
    (tmp_path / "elsewhere").mkdir()
    torch.save({"w": torch.ones(1)}, tmp_path / "elsewhere" / "pytorch_model.bin")
    (model / "2_Dense").symlink_to("../elsewhere")
    proc = run_cli("verify", "--manifest", str(manifest), str(model))
    assert proc.returncode == 1 and f"LINKED   {model / '2_Dense'}" in proc.stdout, proc.stdout
    (model / "2_Dense").unlink()
    torch.save({"a": torch.ones(2)}, model / "shard.data")
    index.write_text(json.dumps({"weight_map": {"a": "shard.data"}}))
    proc = run_cli("verify", "--manifest", str(manifest), str(model))
    assert proc.returncode == 1 and f"UNPINNED {model / 'shard.data'}" in proc.stdout
    proc = run_cli("pin", "--manifest", str(manifest), str(model))
    assert proc.returncode == 0 and "  m/shard.data\n" in manifest.read_text(), proc.stderr
    assert run_cli("verify", "--manifest", str(manifest), str(model)).returncode == 0
    (model / "2_Dense").symlink_to("../elsewhere")  # pin says what it did not follow
    proc = run_cli("pin", "--manifest", str(manifest), str(model))
    assert proc.returncode == 0 and f"{model / '2_Dense'}" in proc.stderr, proc.stderr


def test_names_that_are_not_utf8_or_hold_control_characters(tmp_path: Path) -> None:
    """A weight file name that is not UTF-8: re-pinning died with a traceback after
    truncating the manifest; verify died printing it where stdout is strict UTF-8. Names
    are printed escaped, and the manifest is replaced whole or not at all."""
    model = tmp_path / "m"
    model.mkdir()
    torch.save({"w": torch.ones(2)}, model / "pytorch_model.bin")
    torch.save({"w": torch.ones(2)}, model / "\x1b[2Jx.bin")  # a valid name, printed escaped
    manifest = tmp_path / "SUMS"
    assert run_cli("pin", "--manifest", str(manifest), str(model)).returncode == 0
    pinned = manifest.read_bytes()
    strict = clean_env(PYTHONIOENCODING="utf-8")
    proc = run_cli("verify", "--manifest", str(manifest), str(model), env=strict)
    assert proc.returncode == 0 and "\x1b" not in proc.stdout
    assert f"OK  {model}/\\x1b[2Jx.bin" in proc.stdout, proc.stdout
    odd = os.fsencode(model) + b"/\xff.bin"
    with open(odd, "wb") as f:
        torch.save({"w": torch.ones(2)}, f)
    proc = run_cli("verify", "--manifest", str(manifest), str(model), env=strict)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"UNPINNED {model}/\\udcff.bin" in proc.stdout, proc.stdout
    proc = run_cli("pin", "--manifest", str(manifest), str(model), env=strict)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "not valid UTF-8" in proc.stderr and "\\udcff.bin" in proc.stderr
    assert manifest.read_bytes() == pinned


def test_a_failed_write_leaves_the_old_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    manifest = tmp_path / "SUMS"
    manifest.write_text("old\n")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pinning.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        pinning.write_manifest([str(weights)], str(manifest))
    assert manifest.read_text() == "old\n" and sorted(tmp_path.iterdir()) == [manifest, weights]
