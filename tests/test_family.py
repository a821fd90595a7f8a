"""The rest of the Hugging Face family (issue 13, item 4): peft adapters, diffusers models and
pipelines (their weights and every way a folder makes diffusers import its code), and
``torch.hub.load_state_dict_from_url`` from its cache.

Every run is a fresh interpreter: without sandboxload (the trusted side, and the proof that
each attack is live), and with it switched on as a deployment does (``SANDBOXLOAD=1``, the site
dir on ``PYTHONPATH``, an audit log). Models are tiny, made from configs and saved with the
libraries' own ``save_pretrained``; nothing is downloaded (``HF_HUB_OFFLINE=1``).

peft and diffusers are installed on ``.venv`` only (transformers 5.x): these tests skip
elsewhere. timm and open_clip need torchvision, which has no CPU build here: not tested.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from .helpers import PY, Payload, audited, clean_env, run_cli

slow = pytest.mark.slow  # several fresh interpreters importing transformers / diffusers each


@functools.cache
def site_dir() -> str:
    return run_cli("--site-dir").stdout.strip()


def env_for(audit: Path | None, **extra: str) -> dict[str, str]:
    """No downloads; with sandboxload (env flag, site dir, audit log) when ``audit`` is given."""
    env = clean_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    if audit is not None:
        env.update(SANDBOXLOAD="1", PYTHONPATH=site_dir(), SANDBOXLOAD_AUDIT_LOG=str(audit))
    return env


def run(code: str, arg: Any, audit: Path | None = None, **extra: str) -> Any:
    """What ``code`` prints last (JSON), given ``arg`` as JSON in ``sys.argv[1]``."""
    proc = subprocess.run(
        [PY, "-c", code, json.dumps(arg)],
        env=env_for(audit, **extra),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def routes(audit: Path, root: Path | None = None) -> dict[str, str]:
    """{file name (or path under ``root``): route} of every load the audit log recorded; a
    refusal as ``refused (route)``."""
    return {
        str(Path(e["file"]).relative_to(root)) if root else Path(e["file"]).name: (
            e["route"] if e["decision"] == "loaded" else f"refused ({e['route']})"
        )
        for e in audited(audit)
    }


def payload_checkpoint(path: Path, canary: Path, sd: dict[str, torch.Tensor]) -> Path:
    """``sd`` plus an entry whose unpickling runs ``touch canary``."""
    torch.save({**sd, "evil": Payload(canary)}, path)
    return path


# A call that reaches torch.load with weights_only=True (peft, diffusers) does not run a
# payload on this torch: the live proof turns weights_only off for every torch.load in the
# process (what torch < 2.6 did by default), then makes the same library call.
WEIGHTS_ONLY_OFF = """
import torch
_load = torch.load
def _forced(*args, **kwargs):
    kwargs["weights_only"] = False
    return _load(*args, **kwargs)
torch.load = _forced
"""
# Several calls in one interpreter (each imports diffusers or transformers once, not per call).
OUTCOMES = """
import json, sys
outs = []
for call, arg in json.loads(sys.argv[1]):
    scope = {"arg": arg}
    try:
        exec(call, scope)
        outs.append({"ok": scope["result"]})
    except Exception as exc:
        outs.append({"error": type(exc).__name__, "module": type(exc).__module__, "text": str(exc)})
print(json.dumps(outs))
"""


def outcomes(
    jobs: list[tuple[str, dict[str, Any]]],
    audit: Path | None = None,
    prologue: str = "",
    **extra: str,
) -> list[dict[str, Any]]:
    """The outcome of each ``(call, arg)`` (``call`` sets ``result`` from ``arg``), in one
    fresh interpreter: ``{"ok": result}`` or the error's type, module and text."""
    result: list[dict[str, Any]] = run(prologue + OUTCOMES, jobs, audit, **extra)
    return result


def refused_with(out: dict[str, Any], error: str) -> None:
    assert out.get("error") == error, out
    assert out["module"] == "sandboxload.errors", out


# --- peft -------------------------------------------------------------------------------------

PEFT_BUILD = """
import json, sys
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from peft import LoraConfig, get_peft_model
root = sys.argv[1]
torch.manual_seed(0)
base = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2))
base.save_pretrained(root + "/base")
model = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
model.save_pretrained(root + "/adapter_st")
model.save_pretrained(root + "/adapter_bin", safe_serialization=False)
"""
ADAPTERS = ("adapter_st", "adapter_bin")  # adapter_model.safetensors, adapter_model.bin
PEFT_CALL = """
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base = AutoModelForCausalLM.from_pretrained(arg["base"])
model = PeftModel.from_pretrained(base, arg["adapter"]).eval()
with torch.no_grad():
    logits = model(torch.arange(12).reshape(2, 6)).logits
result = logits.flatten().tolist()
"""


@pytest.fixture(scope="module")
def peft_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("peft")
    proc = subprocess.run(
        [PY, "-c", PEFT_BUILD, str(root)], env=env_for(None), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@slow
def test_peft_adapter_loads_as_without_sandboxload(peft_models: Path, tmp_path: Path) -> None:
    """``PeftModel.from_pretrained(base, adapter)``: the same logits as without sandboxload,
    for the adapter saved as safetensors (safetensors route) and as ``adapter_model.bin``
    (parsed in the sandbox); the adapter changes the output, so it was really applied."""
    base = str(peft_models / "base")
    jobs = [(PEFT_CALL, {"base": base, "adapter": str(peft_models / a)}) for a in ADAPTERS]
    adapted = 'PeftModel.from_pretrained(base, arg["adapter"])'
    plain = outcomes([*jobs, (PEFT_CALL.replace(adapted, "base"), jobs[0][1])])
    audit = tmp_path / "audit"
    protected = outcomes(jobs, audit)
    assert all("ok" in out for out in plain), plain
    assert protected == plain[:2]  # every logit, exactly
    assert plain[0] == plain[1] != plain[2]
    assert routes(audit, peft_models) == {
        "base/model.safetensors": "safetensors",
        "adapter_st/adapter_model.safetensors": "safetensors",
        "adapter_bin/adapter_model.bin": "sandbox",
    }


@slow
def test_peft_payload_adapter_refused(peft_models: Path, tmp_path: Path, canary: Path) -> None:
    """A payload ``adapter_model.bin``: peft reads it with ``torch.load(weights_only=True)``,
    which stops it on this torch, so the live proof turns weights_only off (as torch < 2.6
    did by default) and makes the same call: the canary appears. Under sandboxload the same
    call (weights_only left as peft passes it, and also forced off) raises UnsafeGlobalError
    out of ``PeftModel.from_pretrained``; nothing ran."""
    from safetensors.torch import load_file

    evil = tmp_path / "adapter_evil"
    evil.mkdir()
    (evil / "adapter_config.json").write_bytes(
        (peft_models / "adapter_bin" / "adapter_config.json").read_bytes()
    )
    sd = load_file(str(peft_models / "adapter_st" / "adapter_model.safetensors"))
    payload_checkpoint(evil / "adapter_model.bin", canary, sd)
    arg = {"base": str(peft_models / "base"), "adapter": str(evil)}

    live = outcomes([(PEFT_CALL, arg)], prologue=WEIGHTS_ONLY_OFF)
    assert canary.exists(), live  # the attack is live through PeftModel.from_pretrained
    canary.unlink()

    for prologue in ("", WEIGHTS_ONLY_OFF):
        audit = tmp_path / f"evil{len(prologue)}.audit"
        (out,) = outcomes([(PEFT_CALL, arg)], audit, prologue)
        refused_with(out, "UnsafeGlobalError")
        assert "adapter_model.bin" in out["text"]
        assert not canary.exists()
        assert routes(audit)["adapter_model.bin"] == "refused (sandbox)"


# --- diffusers: weights -----------------------------------------------------------------------

DIFFUSERS_BUILD = """
import sys
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
root = sys.argv[1]
torch.manual_seed(0)
unet = UNet2DModel(
    sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 8),
    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)
unet.save_pretrained(root + "/unet_st")
unet.save_pretrained(root + "/unet_bin", safe_serialization=False)
pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10))
pipe.save_pretrained(root + "/ddpm_st")
pipe.save_pretrained(root + "/ddpm_bin", safe_serialization=False)
"""
UNET_OUT = """
with torch.no_grad():
    out = unet(torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8), 3).sample
result = out.flatten().tolist()
"""
UNET_CALL = "import torch\nfrom diffusers import UNet2DModel\n"
UNET_CALL += 'unet = UNet2DModel.from_pretrained(arg["path"])' + UNET_OUT
PIPE_CALL = "import torch\nfrom diffusers import DiffusionPipeline\n"
PIPE_CALL += 'unet = DiffusionPipeline.from_pretrained(arg["path"]).unet' + UNET_OUT


@pytest.fixture(scope="module")
def diffusers_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("diffusers")
    proc = subprocess.run(
        [PY, "-c", DIFFUSERS_BUILD, str(root)], env=env_for(None), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@slow
def test_diffusers_weights_load_as_without_sandboxload(
    diffusers_models: Path, tmp_path: Path
) -> None:
    """``UNet2DModel.from_pretrained(dir)`` and ``DiffusionPipeline.from_pretrained(dir)``,
    weights saved with and without safetensors: the same outputs as without sandboxload, every
    weight file through the route its format gets."""
    folders = {
        "unet_st": UNET_CALL,
        "unet_bin": UNET_CALL,
        "ddpm_st": PIPE_CALL,
        "ddpm_bin": PIPE_CALL,
    }
    jobs = [(call, {"path": str(diffusers_models / f)}) for f, call in folders.items()]
    plain = outcomes(jobs)
    audit = tmp_path / "audit"
    protected = outcomes(jobs, audit)
    assert all("ok" in out for out in plain), plain
    assert protected == plain  # every output, exactly
    assert all(out == plain[0] for out in plain)  # one model, four ways of saving it
    st, pt = "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"
    assert routes(audit, diffusers_models) == {
        f"unet_st/{st}": "safetensors",
        f"unet_bin/{pt}": "sandbox",
        f"ddpm_st/unet/{st}": "safetensors",
        f"ddpm_bin/unet/{pt}": "sandbox",
    }


@slow
def test_diffusers_payload_weights_refused(diffusers_models: Path, tmp_path: Path) -> None:
    """A payload ``diffusion_pytorch_model.bin``, as a model folder and as a pipeline's unet:
    live when weights_only is off (diffusers passes True, which stops it on this torch);
    under sandboxload UnsafeGlobalError out of ``from_pretrained`` (not diffusers' generic
    "Unable to load weights" OSError), with weights_only as diffusers passes it and forced
    off; nothing ran."""
    import shutil

    from safetensors.torch import load_file

    sd = load_file(str(diffusers_models / "unet_st" / "diffusion_pytorch_model.safetensors"))
    unet = shutil.copytree(diffusers_models / "unet_bin", tmp_path / "unet_evil")
    pipe = shutil.copytree(diffusers_models / "ddpm_bin", tmp_path / "ddpm_evil")
    canaries = [tmp_path / "CANARY-unet", tmp_path / "CANARY-pipeline"]
    for folder, canary in zip((unet, pipe / "unet"), canaries, strict=True):
        payload_checkpoint(folder / "diffusion_pytorch_model.bin", canary, sd)
    jobs = [(UNET_CALL, {"path": str(unet)}), (PIPE_CALL, {"path": str(pipe)})]

    live = outcomes(jobs, prologue=WEIGHTS_ONLY_OFF)
    assert all(c.exists() for c in canaries), live  # live through both calls
    for c in canaries:
        c.unlink()
    for prologue in ("", WEIGHTS_ONLY_OFF):
        audit = tmp_path / f"{len(prologue)}.audit"
        for out in outcomes(jobs, audit, prologue):
            refused_with(out, "UnsafeGlobalError")
            assert "diffusion_pytorch_model.bin" in out["text"]
        assert not any(c.exists() for c in canaries)
        assert routes(audit, tmp_path) == {
            "unet_evil/diffusion_pytorch_model.bin": "refused (sandbox)",
            "ddpm_evil/unet/diffusion_pytorch_model.bin": "refused (sandbox)",
        }


SHARDED_BUILD = """
import sys
from diffusers import UNet2DModel
UNet2DModel.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2], max_shard_size="20KB")
"""
MODULAR_CALL = """
from diffusers import ModularPipeline
pipe = ModularPipeline.from_pretrained(arg["path"])
pipe.load_components()
result = type(pipe.vae).__name__ if getattr(pipe, "vae", None) is not None else None
"""


@slow
def test_diffusers_index_and_swallowed_component_refusals(
    diffusers_models: Path, tmp_path: Path
) -> None:
    """Found by an attack review. (1) A ``diffusion_pytorch_model.safetensors.index.json``
    mapping every tensor to a pickle had it loaded where safetensors were asked for
    (``use_safetensors=True``): refused as the transformers index rule refuses it. (2)
    ``ModularPipeline.load_components()`` logs any component's failure and goes on without
    it: a refused payload left ``vae=None`` and the load looked normal; the refusal now
    reaches the caller."""
    import shutil

    from safetensors.torch import load_file

    sharded = tmp_path / "sharded"
    proc = subprocess.run(
        [PY, "-c", SHARDED_BUILD, str(diffusers_models / "unet_st"), str(sharded)],
        env=env_for(None),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = sharded / "diffusion_pytorch_model.safetensors.index.json"
    doc = json.loads(index.read_text())
    assert len(set(doc["weight_map"].values())) > 1  # really sharded
    doc["weight_map"] = dict.fromkeys(doc["weight_map"], "shard.bin")
    index.write_text(json.dumps(doc))
    for f in sharded.glob("*.safetensors"):
        f.unlink()
    pickled = diffusers_models / "unet_bin" / "diffusion_pytorch_model.bin"
    shutil.copy(pickled, sharded / "shard.bin")

    modular, canary = tmp_path / "modular", tmp_path / "CANARY"
    vae = shutil.copytree(diffusers_models / "unet_bin", modular / "vae")
    sd = load_file(str(diffusers_models / "unet_st" / "diffusion_pytorch_model.safetensors"))
    payload_checkpoint(vae / "diffusion_pytorch_model.bin", canary, sd)
    spec = {"pretrained_model_name_or_path": str(modular), "subfolder": "vae", "variant": None,
            "revision": None, "type_hint": ["diffusers", "UNet2DModel"]}  # fmt: skip
    (modular / "modular_model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionXLModularPipeline",
                "_diffusers_version": "0.42.1",
                "_blocks_class_name": "StableDiffusionXLAutoBlocks",
                "vae": ["diffusers", "UNet2DModel", spec],
            }
        )
    )
    index_call = UNET_CALL.replace('(arg["path"])', '(arg["path"], use_safetensors=True)')
    jobs = [(index_call, {"path": str(sharded)}), (MODULAR_CALL, {"path": str(modular)})]
    plain = outcomes(jobs, prologue=WEIGHTS_ONLY_OFF)
    assert "ok" in plain[0], plain  # upstream loads the pickle the safetensors index names
    assert canary.exists(), plain  # the payload is live
    canary.unlink()
    # Stock diffusers: torch refuses the payload, load_components logs it and goes on.
    assert outcomes(jobs[1:]) == [{"ok": None}]
    index_out, modular_out = outcomes(jobs, tmp_path / "audit", WEIGHTS_ONLY_OFF)
    refused_with(index_out, "ModelFolderError")
    assert "not a safetensors file" in index_out["text"]
    refused_with(modular_out, "UnsafeGlobalError")
    assert "vae/diffusion_pytorch_model.bin" in modular_out["text"]
    assert not canary.exists()


# --- diffusers: remote code -------------------------------------------------------------------

EVIL = """import this  # check_imports imports every module a file names, before its code runs
import os
import pathlib

pathlib.Path(os.environ["EVIL_CANARY_DIR"], {case!r}).touch()
"""
PIPELINE_CLASS = """
from diffusers import DiffusionPipeline


class EvilPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
"""
UNET_CLASS = """
from diffusers import UNet2DModel


class EvilUNet(UNet2DModel):
    pass
"""
BLOCKS_CLASS = """
from diffusers.modular_pipelines import ModularPipelineBlocks


class EvilBlocks(ModularPipelineBlocks):
    pass
"""
TRUSTED = ", trust_remote_code=True"
# case -> (what the folder holds, the call, whether upstream runs the code). ``model`` is the
# case's folder, ``code`` a folder beside it.
REMOTE_CASES: dict[str, tuple[str, str, bool]] = {
    "custom_pipeline-dir": (
        "pipeline",
        f"DiffusionPipeline.from_pretrained(model, custom_pipeline=code{TRUSTED})",
        True,
    ),
    "custom_pipeline-file": (
        "pipeline",
        f"DiffusionPipeline.from_pretrained(model, custom_pipeline=code + '/evil.py'{TRUSTED})",
        True,
    ),
    "custom_pipeline-name-in-folder": (
        "pipeline",
        f"DiffusionPipeline.from_pretrained(model, custom_pipeline='evil_named'{TRUSTED})",
        True,
    ),
    "custom_pipeline-community": (  # fetched from the hub's community mirror: no network here
        "pipeline",
        "DiffusionPipeline.from_pretrained(model, custom_pipeline='lpw_stable_diffusion'"
        f"{TRUSTED})",
        False,
    ),
    "from_pipe-custom_pipeline": (
        "pipeline",
        "DiffusionPipeline.from_pipe(DiffusionPipeline.from_pretrained(model), "
        f"custom_pipeline=code{TRUSTED})",
        True,
    ),
    "model_index-pipeline-class": (
        "index-class",
        f"DiffusionPipeline.from_pretrained(model{TRUSTED})",
        True,
    ),
    "model_index-component": (
        "index-component",
        f"DiffusionPipeline.from_pretrained(model{TRUSTED})",
        True,
    ),
    "model_index-component-untrusted": (
        "index-component",
        "DiffusionPipeline.from_pretrained(model)",
        False,  # upstream refuses it (ValueError): no code runs
    ),
    "auto_map-AutoModel": ("auto_map", f"AutoModel.from_pretrained(model{TRUSTED})", True),
    "modular-blocks": ("modular", f"ModularPipelineBlocks.from_pretrained(model{TRUSTED})", True),
    "modular-pipeline": ("modular", f"ModularPipeline.from_pretrained(model{TRUSTED})", True),
}
REMOTE_RUNNER = """
import json, os, sys
from diffusers import AutoModel, DiffusionPipeline, ModularPipeline, ModularPipelineBlocks
jobs, out = json.loads(sys.argv[1]), sys.argv[2]
results = {}
for case, (model, code, call) in jobs.items():
    try:
        eval(call)
        outcome = "loaded"
    except Exception as exc:
        outcome = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    results[case] = {
        "outcome": outcome,
        "ran": os.path.exists(os.path.join(os.environ["EVIL_CANARY_DIR"], case)),
        "this_imported": "this" in sys.modules,
    }
with open(out, "w") as f:
    json.dump(results, f)
"""


def remote_folder(ddpm: Path, unet: Path, root: Path, case: str, kind: str) -> tuple[Path, Path]:
    """(model folder, code folder) of one case: the tiny DDPM pipeline (or UNet) plus code."""
    import shutil

    code = root / "code"
    code.mkdir(parents=True)
    (code / "pipeline.py").write_text(EVIL.format(case=case) + PIPELINE_CLASS)
    (code / "evil.py").write_text(EVIL.format(case=case) + PIPELINE_CLASS)
    model = root / "model"
    if kind in ("auto_map", "modular"):
        shutil.copytree(unet, model)
    else:
        shutil.copytree(ddpm, model)
    index = model / "model_index.json"
    if kind == "pipeline":
        (model / "evil_named.py").write_text(EVIL.format(case=case) + PIPELINE_CLASS)
    elif kind == "index-class":
        (model / "evil_index.py").write_text(EVIL.format(case=case) + PIPELINE_CLASS)
        doc = json.loads(index.read_text())
        index.write_text(json.dumps({**doc, "_class_name": ["evil_index", "EvilPipeline"]}))
    elif kind == "index-component":
        (model / "unet" / "evil_unet.py").write_text(EVIL.format(case=case) + UNET_CLASS)
        doc = json.loads(index.read_text())
        index.write_text(json.dumps({**doc, "unet": ["evil_unet", "EvilUNet"]}))
    elif kind == "auto_map":
        (model / "evil_auto.py").write_text(EVIL.format(case=case) + UNET_CLASS)
        config = model / "config.json"
        doc = json.loads(config.read_text())
        config.write_text(json.dumps({**doc, "auto_map": {"AutoModel": "evil_auto.EvilUNet"}}))
    elif kind == "modular":
        (model / "evil_blocks.py").write_text(EVIL.format(case=case) + BLOCKS_CLASS)
        (model / "modular_config.json").write_text(
            json.dumps(
                {
                    "_class_name": "EvilBlocks",
                    "_diffusers_version": "0.42.1",
                    "auto_map": {"ModularPipelineBlocks": "evil_blocks.EvilBlocks"},
                }
            )
        )
    return model, code


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def run_remote(models: Path, tmp: Path, *, upstream: bool = False, **env: str) -> dict[str, Any]:
    """Build every case afresh under ``tmp``, run them all in one interpreter (with sandboxload
    unless ``upstream``); also what the run wrote (``__written__``)."""
    canaries, modules = tmp / "canaries", tmp / "hf_modules"
    canaries.mkdir(parents=True)
    jobs = {}
    for case, (kind, call, _live) in REMOTE_CASES.items():
        if case == "custom_pipeline-community" and (upstream or "SANDBOXLOAD_REMOTE_CODE" in env):
            continue  # upstream asks PyPI and the hub for it: only run where it is refused
        model, code = remote_folder(
            models / "ddpm_st", models / "unet_st", tmp / "cases" / case, case, kind
        )
        jobs[case] = (str(model), str(code), call)
    before = files_under(tmp)
    out = tmp / "results.json"
    full_env = env_for(
        None if upstream else tmp / "audit",
        EVIL_CANARY_DIR=str(canaries),
        HF_MODULES_CACHE=str(modules),
        **env,
    )
    proc = subprocess.run(
        [PY, "-c", REMOTE_RUNNER, json.dumps(jobs), str(out)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results: dict[str, Any] = json.loads(out.read_text())
    results["__written__"] = sorted(files_under(tmp) - before - {"results.json", "audit"})
    return results


@pytest.fixture(scope="module")
def remote_upstream(diffusers_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return run_remote(diffusers_models, tmp_path_factory.mktemp("upstream"), upstream=True)


@slow
def test_diffusers_remote_code_runs_upstream(remote_upstream: dict[str, Any]) -> None:
    """Without sandboxload each case (but the untrusted one, which diffusers itself refuses)
    imports the folder's code: copied into the modules cache, ``check_imports`` run, the canary
    created. The refusals below are what stops it."""
    for case, (_kind, _call, live) in REMOTE_CASES.items():
        if case in remote_upstream:
            assert remote_upstream[case]["ran"] is live, (case, remote_upstream[case])
    untrusted = remote_upstream["model_index-component-untrusted"]["outcome"]
    assert untrusted.startswith("builtins.ValueError"), untrusted
    assert any(w.startswith("hf_modules/") for w in remote_upstream["__written__"])


@slow
def test_diffusers_remote_code_refused(diffusers_models: Path, tmp_path: Path) -> None:
    """With sandboxload every case -- custom_pipeline as a folder, a file, a name in the model
    folder, a community name; from_pipe; a model_index.json pipeline class or component class
    (trusted or not); AutoModel and modular blocks / pipelines with auto_map -- raises
    RemoteCodeRefusedError (the transformers gate's error) out of the user's call, before any
    file is copied or any module it names is imported: no canary, nothing written."""
    results = run_remote(diffusers_models, tmp_path)
    for case in REMOTE_CASES:
        r = results[case]
        assert r["outcome"].startswith("sandboxload.errors.RemoteCodeRefusedError"), (case, r)
        assert "SANDBOXLOAD_REMOTE_CODE=allow" in r["outcome"], (case, r)
        assert not r["ran"], (case, r)
        assert not r["this_imported"], (case, r)  # check_imports never ran
    assert (
        str(tmp_path / "cases" / "model_index-component" / "model" / "unet")
        in (results["model_index-component"]["outcome"])
    )
    assert results["__written__"] == [], results["__written__"]


@slow
def test_diffusers_remote_code_allowed_is_upstream(
    diffusers_models: Path, remote_upstream: dict[str, Any], tmp_path: Path
) -> None:
    """Under the operator's ``SANDBOXLOAD_REMOTE_CODE=allow`` every case is upstream's own."""
    results = run_remote(diffusers_models, tmp_path, SANDBOXLOAD_REMOTE_CODE="allow")
    for case in remote_upstream:
        if case in REMOTE_CASES:
            assert results[case]["ran"] == remote_upstream[case]["ran"], case
            kind = results[case]["outcome"].split(":")[0]
            assert kind == remote_upstream[case]["outcome"].split(":")[0], case


# --- torch.hub --------------------------------------------------------------------------------

HUB_URL = "https://weights.example.invalid/releases/{name}"  # never fetched: it is cached
HUB_CALL = """
import torch.hub
if arg.get("model_dir"):
    sd = torch.hub.load_state_dict_from_url(
        arg["url"], model_dir=arg["model_dir"], check_hash=False, progress=False
    )
else:  # $TORCH_HOME/hub/checkpoints
    sd = torch.hub.load_state_dict_from_url(arg["url"], check_hash=False, progress=False)
result = {k: v.tolist() for k, v in sd.items()}
"""


def hub_cache(root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torch hub checkpoint cache holding ``ckpt.pt`` (torch.save) and ``legacy.zip`` (a zip
    of one legacy-format checkpoint, which the hub extracts before loading), as a download
    would have left them; also $TORCH_HOME's cache, ``root/home/hub/checkpoints``."""
    import zipfile

    sd = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(3)}
    cache = root / "cache"
    cache.mkdir()
    torch.save(sd, cache / "ckpt.pt")
    torch.save(sd, root / "inner.pt", _use_new_zipfile_serialization=False)
    with zipfile.ZipFile(cache / "legacy.zip", "w") as z:
        z.write(root / "inner.pt", "inner.pt")
    home = root / "home" / "hub" / "checkpoints"
    home.mkdir(parents=True)
    torch.save(sd, home / "ckpt.pt")
    return cache, sd


def test_hub_cached_checkpoint_loads_through_the_sandbox(tmp_path: Path) -> None:
    """``torch.hub.load_state_dict_from_url`` of a file already in its cache (``model_dir``, a
    legacy zip it extracts first, ``$TORCH_HOME``): nothing downloaded (the URL's host does
    not exist), the same tensors as without sandboxload, parsed in the sandbox."""
    cache, sd = hub_cache(tmp_path)
    expected = {k: v.tolist() for k, v in sd.items()}
    jobs = [
        (HUB_CALL, {"url": HUB_URL.format(name=name), "model_dir": model_dir})
        for name, model_dir in (
            ("ckpt.pt", str(cache)),
            ("legacy.zip", str(cache)),
            ("ckpt.pt", None),
        )
    ]
    home = str(tmp_path / "home")
    plain = outcomes(jobs, TORCH_HOME=home)
    audit = tmp_path / "audit"
    protected = outcomes(jobs, audit, TORCH_HOME=home)
    assert plain == protected == [{"ok": expected}] * 3
    assert routes(audit, tmp_path) == {
        "cache/ckpt.pt": "sandbox",
        "cache/inner.pt": "sandbox",  # extracted from legacy.zip by torch.hub, then loaded
        "home/hub/checkpoints/ckpt.pt": "sandbox",
    }


def test_hub_cached_payload_refused(tmp_path: Path, canary: Path) -> None:
    """A payload in the hub's cache: ``load_state_dict_from_url`` loads with
    ``weights_only=False`` by default, so the attack is live through the call itself; with
    sandboxload it raises UnsafeGlobalError, nothing ran."""
    cache, sd = hub_cache(tmp_path)
    payload_checkpoint(cache / "evil.pt", canary, sd)
    arg = {"url": HUB_URL.format(name="evil.pt"), "model_dir": str(cache)}
    live = outcomes([(HUB_CALL, arg)])
    assert canary.exists(), live
    canary.unlink()
    audit = tmp_path / "evil.audit"
    (out,) = outcomes([(HUB_CALL, arg)], audit)
    refused_with(out, "UnsafeGlobalError")
    assert "evil.pt" in out["text"] and "posix.system" in out["text"]
    assert not canary.exists()
    assert routes(audit) == {"evil.pt": "refused (sandbox)"}
