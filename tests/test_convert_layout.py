"""What a folder's conversion may change about what the folder loads, and where it writes
(found by the third attack review): a stray pickle may not become the safetensors the
loaders prefer, shards may not hold a name twice, an in-place conversion writes and removes
only inside the folder it started with, and ``python -m sandboxload`` run inside a model
folder imports nothing from it."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file

from sandboxload.conversion import folder, layout

from .helpers import PY, clean_env, run_cli, sharded_copy


def convert(*args: str | Path, cwd: Path | None = None) -> Any:
    return run_cli("convert", *map(str, args), cwd=cwd, timeout=600)


@pytest.mark.parametrize("stray", ["model.pt", "model.bin", "adapter_model.pt"])
def test_a_stray_pickle_does_not_become_a_name_the_loaders_prefer(
    tmp_path: Path, stray: str
) -> None:
    """transformers reads model.safetensors before any shard index: a model.pt that nothing
    loaded would have replaced the folder's weights (all 7.0 after conversion)."""
    model = sharded_copy(tmp_path / "m", "bin")
    torch.save({"embeddings.word_embeddings.weight": torch.full((4, 4), 7.0)}, model / stray)
    out = tmp_path / "out"
    proc = convert(model, "--out", out)
    assert proc.returncode == 1, proc.stderr
    assert f"it would become {stray.split('.', maxsplit=1)[0]}.safetensors" in proc.stderr
    assert not out.exists()
    proc = convert(model, "--out", out, "--exclude", stray)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "model.safetensors").exists()


def test_a_distributed_checkpoint_beside_other_weights_is_refused(tmp_path: Path) -> None:
    model = sharded_copy(tmp_path / "m", "bin")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(2)}, checkpoint_id=str(model))
    proc = convert(model, "--out", tmp_path / "out")
    assert proc.returncode == 1 and "holds other weights too" in proc.stderr, proc.stderr


@pytest.mark.parametrize("second", ["n.bin", "pytorch_model-x.bin"])
def test_a_name_held_by_two_shards_is_refused(tmp_path: Path, second: str) -> None:
    """The loaders read every shard whole and keep the copy read last; renaming the shards
    reorders them (n.bin -> n.safetensors sorts after model-x.safetensors)."""
    model = tmp_path / "m"
    model.mkdir()
    first = "pytorch_model-x.bin" if second == "n.bin" else "n.bin"
    torch.save({"a": torch.full((2,), 2.0)}, model / first)
    torch.save({"a": torch.full((2,), 1.0), "b": torch.ones(1)}, model / second)
    index = {"metadata": {}, "weight_map": {"a": first, "b": second}}
    (model / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    proc = convert(model, "--out", out)
    assert proc.returncode == 1 and "holds 'a', which" in proc.stderr, proc.stderr
    assert not out.exists()


def test_in_place_writes_and_removes_only_in_the_directories_it_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sub-directory renamed and replaced by a link to another model while its pickle is
    parsed (after the check of the file opened) redirected the write of model.safetensors
    and the removal of the pickle into that model. The race is made deterministic by doing
    the swap right after that check."""
    root, victim = tmp_path / "upload", tmp_path / "victim"
    (root / "sub").mkdir(parents=True)
    victim.mkdir()
    save_file({"w": torch.ones(4)}, str(victim / "model.safetensors"))
    torch.save({"w": torch.ones(4)}, victim / "pytorch_model.bin")
    torch.save({"w": torch.full((4,), 666.0)}, root / "sub" / "pytorch_model.bin")
    real = folder.check_target

    def racing(p: layout.Plan, path: str, fd: int | None = None) -> None:
        real(p, path, fd)
        if path.endswith("sub/pytorch_model.bin") and not (root / "old").exists():
            os.rename(root / "sub", root / "old")
            os.symlink(victim, root / "sub")

    monkeypatch.setattr(folder, "check_target", racing)
    p = layout.plan(str(root), in_place=True)
    folder.execute(p, None, None, False, True)
    assert (root / "old").exists() and (root / "sub").is_symlink()  # the swap happened
    assert load_file(str(victim / "model.safetensors"))["w"].tolist() == [1.0] * 4
    assert (victim / "pytorch_model.bin").exists()
    assert load_file(str(root / "old" / "model.safetensors"))["w"].tolist() == [666.0] * 4
    assert not (root / "old" / "pytorch_model.bin").exists()
    assert sorted(os.listdir(root / "old")) == ["model.safetensors"]  # no temporary left


def test_a_pickle_replaced_after_its_conversion_is_not_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    torch.save({"w": torch.ones(2)}, root / "pytorch_model.bin")
    real = folder.convert_one

    def then_replaced(path: str, *args: Any, **kwargs: Any) -> folder.Converted:
        done = real(path, *args, **kwargs)
        os.replace(root / "pytorch_model.bin", root / "moved.bin")  # another file, same name
        torch.save({"w": torch.zeros(2)}, root / "pytorch_model.bin")
        return done

    monkeypatch.setattr(folder, "convert_one", then_replaced)
    p = layout.plan(str(root), in_place=True)
    with pytest.raises(Exception, match="no longer the file that was converted"):
        folder.execute(p, None, None, False, True)
    assert torch.load(root / "pytorch_model.bin")["w"].tolist() == [0.0, 0.0]


NUMPY_PAYLOAD = """
import pathlib, sys
pathlib.Path({canary!r}).write_text("ran")
sys.modules.pop("numpy", None)
sys.path = [p for p in sys.path if p not in ("", {here!r})]
import numpy  # the real one, so the run goes on as if nothing happened
"""


def test_python_m_sandboxload_imports_nothing_from_the_working_directory(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    torch.save({"w": torch.ones(2)}, model / "pytorch_model.bin")
    canary = tmp_path / "CANARY"
    (model / "numpy.py").write_text(NUMPY_PAYLOAD.format(canary=str(canary), here=str(model)))
    live = run_cli_in(model, ["-c", "import numpy"])
    assert live.returncode == 0 and canary.exists(), live.stderr  # what cwd first would do
    canary.unlink()
    proc = convert(".", "--out", tmp_path / "out", cwd=model)
    assert proc.returncode == 0, proc.stderr
    assert not canary.exists()
    assert load_file(str(tmp_path / "out" / "model.safetensors"))["w"].tolist() == [1.0, 1.0]


def run_cli_in(cwd: Path, argv: list[str]) -> Any:
    import subprocess

    return subprocess.run(
        [PY, *argv], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=120
    )
