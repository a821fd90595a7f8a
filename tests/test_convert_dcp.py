"""``sandboxload convert`` of a torch.distributed.checkpoint folder (``.metadata`` and
``*.distcp``, as FSDP and accelerate save a model): one ``model.safetensors`` that
``from_pretrained`` loads to the same model as the original weights; payloads in the metadata
or in a record are refused and never run (each proven live without sandboxload first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors
import torch

from . import test_dcp
from .helpers import clean_env, json_without_sandboxload, run_cli
from .test_convert import TIED, _tiny, files, partials
from .test_dcp import save


def convert(*args: str | Path, env: dict[str, str] | None = None) -> Any:
    return run_cli("convert", *map(str, args), env=env, timeout=600)


def sharded_model(tmp_path: Path) -> tuple[Path, Path, torch.nn.Module]:
    """A tiny GPT-2 saved the way accelerate saves an FSDP model (``{"model": state_dict}``
    through dcp) beside its config, and the same weights as a plain pickle folder."""
    _, model = _tiny("gpt2")
    folder = tmp_path / "fsdp"
    model.config.save_pretrained(folder)
    save(folder, {"model": model.state_dict(), "step": 3})
    plain = tmp_path / "plain"
    model.config.save_pretrained(plain)
    torch.save(model.state_dict(), plain / "pytorch_model.bin")
    return folder, plain, model


def test_a_model_saved_through_dcp_converts_to_the_same_model(tmp_path: Path) -> None:
    folder, plain, model = sharded_model(tmp_path)
    out = tmp_path / "out"
    proc = convert(folder, "--key", "model", "--out", out)
    assert proc.returncode == 0, proc.stderr
    # The checkpoint's files became one model.safetensors; the config came over unchanged.
    assert files(out) == {"config.json", "model.safetensors"}
    assert (out / "config.json").read_bytes() == (folder / "config.json").read_bytes()
    with safetensors.safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(model.state_dict())
        for k, v in model.state_dict().items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and torch.equal(got, v), k
    auto = "AutoModelForCausalLM"
    got = json_without_sandboxload(TIED, [[auto, str(plain)], [auto, str(out)]])
    assert got[str(out)]["logits"] == got[str(plain)]["logits"]
    assert got[str(out)]["tied"]


def test_values_that_are_not_tensors_are_named_not_dropped(tmp_path: Path) -> None:
    folder, _, _ = sharded_model(tmp_path)
    proc = convert(folder, "--out", tmp_path / "out")
    assert proc.returncode == 1
    assert f"cannot convert '{folder}': entry 'model' is a dict of" in proc.stderr
    assert "--key model" in proc.stderr
    assert not (tmp_path / "out").exists() and not partials(tmp_path)


def test_in_place_with_delete_pickle_removes_the_checkpoint_files(tmp_path: Path) -> None:
    ck = save(tmp_path / "ck", {"w": torch.arange(6.0), "b": torch.ones(2, dtype=torch.bool)})
    proc = convert(ck, "--in-place", "--delete-pickle")
    assert proc.returncode == 0, proc.stderr
    assert files(ck) == {"model.safetensors"}
    with safetensors.safe_open(str(ck / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("w"), torch.arange(6.0))


def test_the_policy_pickle_and_formats_do_not_stop_a_conversion(tmp_path: Path) -> None:
    """Converting parses in the sandbox whatever ``pickle`` and ``formats`` say (as for a
    single pickle); the manifest still applies."""
    ck = save(tmp_path / "ck", {"w": torch.arange(6.0)})
    env = clean_env(SANDBOXLOAD_PICKLE="refuse", SANDBOXLOAD_FORMATS="safetensors")
    proc = convert(ck, env=env)
    assert proc.returncode == 0, proc.stderr
    manifest = tmp_path / "manifest.sha256"
    assert run_cli("pin", "--manifest", str(manifest), str(ck)).returncode == 0
    with open(ck / "__0_0.distcp", "r+b") as f:
        f.seek(0, 2)
        f.write(b"\0")  # a byte after the pin
    out = tmp_path / "out2"
    proc = convert(ck, "--out", out, env=clean_env(SANDBOXLOAD_MANIFEST=str(manifest)))
    assert proc.returncode == 1, proc.stderr
    assert "__0_0.distcp" in proc.stderr and "manifest" in proc.stderr, proc.stderr
    assert not out.exists() and not partials(tmp_path)


LOAD_WITHOUT = """
import json, sys, warnings
warnings.simplefilter("ignore")
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
for folder in json.loads(sys.argv[1]):
    try:
        dcp_to_torch_save(folder, folder + ".pt")
    except BaseException as exc:  # dcp's CheckpointException is a BaseException
        pass
print("[]")
"""


def test_payloads_are_refused_and_never_run(tmp_path: Path) -> None:
    """A payload ``.metadata`` (three techniques), and honest metadata naming a payload
    record for a non-tensor value: each live through ``dcp_to_torch_save`` without
    sandboxload, each refused by convert with nothing written."""
    honest = save(tmp_path / "honest", {"w": torch.ones(3, 4), "step": 1})
    techniques = ["os.system", "builtins.exec", "memo indirection"]
    cases = test_dcp.payload_folders(tmp_path, honest, techniques)
    record = save(tmp_path / "record", {"w": torch.ones(3, 4), "step": 1})
    test_dcp.byte_record_payload(record, tmp_path / "canary-record")
    cases["record"] = (record, tmp_path / "canary-record")
    json_without_sandboxload(LOAD_WITHOUT, [str(f) for f, _ in cases.values()])
    for name, (_, canary) in cases.items():
        assert canary.exists(), f"{name} is not live without sandboxload"
        canary.unlink()
    for name, (folder, canary) in cases.items():
        out = tmp_path / f"out-{folder.name}"
        proc = convert(folder, "--drop-non-tensors", "--out", out)
        assert proc.returncode == 1, (name, proc.stdout, proc.stderr)
        # One plain refusal naming the file (dcp's own logged tracebacks are not shown).
        (line,) = proc.stderr.splitlines()
        where = "<BytesIO> read from {}" if name == "record" else "{}"
        what = folder / ("__0_0.distcp" if name == "record" else ".metadata")
        assert f"refused to unpickle '{where.format(what)}'" in line, (name, line)
        assert not canary.exists(), name
        assert not out.exists() and not partials(tmp_path), name


def test_a_checkpoint_without_its_metadata_or_named_by_a_file_is_refused(tmp_path: Path) -> None:
    ck = save(tmp_path / "ck", {"w": torch.arange(6.0)})
    proc = convert(ck / ".metadata")
    assert proc.returncode == 2 and "convert the folder that holds it" in proc.stderr
    (ck / ".metadata").unlink()
    proc = convert(ck)
    assert proc.returncode == 1 and ".metadata file" in proc.stderr, proc.stderr
    assert not (tmp_path / "ck-safetensors").exists()
