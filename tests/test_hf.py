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

from .helpers import (
    PY,
    SENTENCES,
    Payload,
    add_dense,
    audited,
    clean_env,
    copy_model,
    encode_unprotected,
    pickle_copy,
    remote_code_model,
    sharded_copy,
    state_dict,
)


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
    audit_log: Path, folders: dict[str, Path], reference: dict[str, Any], kind: str
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
    log = [e for e in audited(audit_log) if e["decision"] == "loaded"]
    assert {e["file"] for e in log} == {str(f) for f in weight_files}
    routes = {e["route"] for e in log}
    assert routes == ({"sandbox"} if "pickle" in kind else {"safetensors"})


def test_index_pointing_outside_the_folder(audit_log: Path, tmp_path: Path) -> None:
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


def test_safetensors_index_pointing_at_a_pickle(
    audit_log: Path, tmp_path: Path, canary: Path
) -> None:
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
    audit_log: Path, tmp_path: Path, canary: Path
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
def test_transformers_weights_redirect(audit_log: Path, tmp_path: Path, target: str) -> None:
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


def test_remote_code_is_refused(audit_log: Path, tmp_path: Path, canary: Path) -> None:
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


@pytest.mark.parametrize("where", ["modules.json", "dense activation"])
def test_config_named_classes_are_refused(audit_log: Path, tmp_path: Path, where: str) -> None:
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


def test_dense_module_weights_go_through_sandboxload(audit_log: Path, tmp_path: Path) -> None:
    """A Dense module (pickle weights) after the Transformer: its file is audited too."""
    path = copy_model(tmp_path / "m")
    dense = add_dense(path, "torch.nn.modules.activation.Tanh")
    got = st_encode(path)
    want = encode_unprotected([path])[str(path)]
    assert got == want
    files = {e["file"]: e["route"] for e in audited(audit_log) if e["decision"] == "loaded"}
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
