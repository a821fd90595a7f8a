"""Training resume (issue 13, item 3): a checkpoint folder that ``transformers.Trainer`` wrote
resumes under sandboxload exactly as without it, and a payload in it is refused through the
call a user makes, ``trainer.train(resume_from_checkpoint=...)``.

A tiny GPT-2 (from a config; nothing downloaded) trains 6 steps without sandboxload, saving
``checkpoint-3``; fresh interpreters resume from it without and with sandboxload
(``tests/trainer_resume_run.py`` is the script each runs). What Trainer loads on resume, in
4.57 and 5.x alike: ``model.safetensors`` (``_load_from_checkpoint``, safetensors),
``trainer_state.json`` (JSON), ``optimizer.pt`` and ``scheduler.pt``
(``_load_optimizer_and_scheduler``, ``torch.load(weights_only=True)``), ``scaler.pt`` if
there is one (``_load_scaler``; CPU training writes none) and ``rng_state.pth``
(``_load_rng_state``: ``torch.load(weights_only=True)`` in 5.x, ``torch.load(path)`` with no
``weights_only`` in 4.57, both inside Trainer's NumPy allowlist). ``training_args.bin`` is
written, never read. No ``try`` surrounds these loads in either version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from sandboxload.errors import UnsafeGlobalError

from . import attacks
from .helpers import PY, Payload, audited, clean_env, run_cli, run_py

slow = pytest.mark.slow  # a real Trainer run in fresh interpreters

RUN = Path(__file__).parent / "trainer_resume_run.py"
STEPS, SAVED = 6, 3  # the script's: 6 steps, checkpoint-3 resumed
PICKLES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
ARGS_CLASS = "transformers.training_args.TrainingArguments"


def run(mode: str, work: Path, *args: str, audit: Path | None = None) -> dict[str, Any]:
    """``trainer_resume_run.py MODE`` in a fresh interpreter; with sandboxload (env flag and
    site dir, as a deployment sets them) when ``audit`` names its audit log."""
    env = clean_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if audit is not None:
        site_dir = run_cli("--site-dir").stdout.strip()
        env.update(SANDBOXLOAD="1", PYTHONPATH=site_dir, SANDBOXLOAD_AUDIT_LOG=str(audit))
    out = work / f"{mode}-{'sandboxload' if audit else 'plain'}.json"
    proc = subprocess.run(
        [PY, str(RUN), mode, str(work / out.stem), str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["sandboxload"] is (audit is not None)
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trainer")


@pytest.fixture(scope="module")
def trained(work: Path) -> dict[str, Any]:
    """The uninterrupted run, without sandboxload; its checkpoints are under work/train-plain."""
    return run("train", work)


@pytest.fixture(scope="module")
def checkpoint(trained: dict[str, Any], work: Path) -> Path:
    return work / "train-plain" / f"checkpoint-{SAVED}"


@pytest.fixture(scope="module")
def resumed(checkpoint: Path, work: Path) -> dict[str, dict[str, Any]]:
    """The resume from checkpoint-3, without and with sandboxload (audited to work/audit)."""
    return {
        "plain": run("resume", work, str(checkpoint)),
        "sandboxload": run("resume", work, str(checkpoint), audit=work / "audit.jsonl"),
    }


@slow
def test_resume_under_sandboxload_continues_with_the_same_losses(
    trained: dict[str, Any], resumed: dict[str, dict[str, Any]]
) -> None:
    plain, protected = resumed["plain"]["losses"], resumed["sandboxload"]["losses"]
    assert len(plain) == STEPS - SAVED
    assert protected == plain  # exact floats, every step
    # And both continue the uninterrupted run exactly: dropout draws from the restored RNG,
    # Adam from the restored moments, so nothing restored wrongly could leave this equal.
    assert plain == trained["losses"][SAVED:]


@slow
def test_trainer_restored_the_same_optimizer_scheduler_and_rng_states(
    resumed: dict[str, dict[str, Any]],
) -> None:
    plain, protected = resumed["plain"], resumed["sandboxload"]
    assert plain["optimizer_states"] == protected["optimizer_states"] > 0  # Adam moments
    assert plain["scheduler_last_epoch"] == protected["scheduler_last_epoch"] == SAVED
    for what in ("optimizer", "scheduler", "rng"):  # dtypes, shapes, bytes and types
        assert protected[what] == plain[what], what


@slow
def test_the_pickles_went_through_the_sandbox(
    checkpoint: Path, resumed: dict[str, dict[str, Any]], work: Path
) -> None:
    entries = audited(work / "audit.jsonl")[: resumed["sandboxload"]["audit_lines_after_train"]]
    by_file = {Path(e["file"]).name: e for e in entries}
    assert len(by_file) == len(entries)  # each file loaded once
    assert set(by_file) == {*PICKLES, "model.safetensors"}  # training_args.bin: never read
    for name in PICKLES:
        e = by_file[name]
        assert (e["api"], e["format"], e["decision"], e["route"]) == (
            "torch.load",
            "torch-zip",
            "loaded",
            "sandbox",
        ), e
        assert Path(e["file"]).resolve() == (checkpoint / name).resolve()
    assert by_file["model.safetensors"]["route"] == "safetensors"


@slow
def test_each_pickle_loads_the_same_through_the_sandbox(
    resumed: dict[str, dict[str, Any]],
) -> None:
    """torch.load of each file with Trainer's arguments: the same values, types and bytes."""
    plain, protected = resumed["plain"]["as_trainer"], resumed["sandboxload"]["as_trainer"]
    for name in PICKLES:
        assert "value" in plain[name], plain[name]
        assert protected[name] == plain[name], name


def item(value: Any, key: str) -> Any:
    """The entry ``key`` of a dict as the script records it ([type, [[key, value]...]])."""
    return next(v for k, v in value[1] if k == ["builtins.str", repr(key)])


@slow
def test_rng_state_is_refused_by_weights_only_and_rebuilt_exactly_by_the_sandbox(
    resumed: dict[str, dict[str, Any]],
) -> None:
    """The case the issue means: rng_state.pth holds NumPy's RNG state (an array), which
    torch.load's default (weights_only=True) refuses unless the caller allowlists NumPy, as
    Trainer does: every other script that reads the file flips to weights_only=False."""
    plain, protected = resumed["plain"], resumed["sandboxload"]
    refused = plain["rng_default"]
    assert refused["error"] == "UnpicklingError", refused
    assert "multiarray._reconstruct" in refused["message"]  # numpy._core (2.x) / numpy.core
    # Under sandboxload the same call (no allowlist) loads it: equal to Trainer's own load.
    assert protected["rng_default"] == plain["as_trainer"]["rng_state.pth"]
    state = protected["rng_default"]["value"]
    kind, (name, keys, pos, has_gauss, gauss) = item(state, "numpy")
    assert kind == "builtins.tuple" and name == ["builtins.str", "'MT19937'"]
    assert keys[:3] == ["numpy.ndarray", "<u4", [624]]
    assert [pos[0], has_gauss[0], gauss[0]] == ["builtins.int", "builtins.int", "builtins.float"]
    kind, (_, internal, _) = item(state, "python")
    assert kind == "builtins.tuple" and internal[0] == "builtins.tuple" and len(internal[1]) == 625
    assert item(state, "cpu")[:2] == ["torch.Tensor", "torch.uint8"]


@slow
def test_weights_only_refuses_training_args_too(resumed: dict[str, dict[str, Any]]) -> None:
    refused = resumed["plain"]["args_weights_only"]
    assert refused["error"] == "UnpicklingError" and ARGS_CLASS in refused["message"]


@slow
@pytest.mark.usefixtures("sandboxed")
def test_training_args_is_refused_typed_naming_the_global_and_a_way_out(
    checkpoint: Path, canary: Path
) -> None:
    path = checkpoint / "training_args.bin"
    for weights_only in (True, False):  # a caller's weights_only=False changes nothing
        with pytest.raises(UnsafeGlobalError) as refused:
            torch.load(path, weights_only=weights_only)
        assert refused.value.global_name == ARGS_CLASS
        message = str(refused.value)
        assert str(path) in message and repr(ARGS_CLASS) in message
        # The way out fits the file: not weights, not needed to resume, readable as JSON or,
        # if you wrote it, with the operator's opt-out.
        for words in ("not weights", "does not read it to resume", "to_json_string()"):
            assert words in message
        assert "SANDBOXLOAD_PICKLE=allow and torch.load(path, weights_only=False)" in message
        assert "Get the weights as safetensors" not in message


@slow
def test_the_way_out_named_works_and_allow_globals_would_not(checkpoint: Path) -> None:
    path = str(checkpoint / "training_args.bin")
    code = f"import torch; a = torch.load({path!r}, weights_only=False); print(a.max_steps)"
    proc = run_py(code, env=clean_env(SANDBOXLOAD="1", SANDBOXLOAD_PICKLE="allow"))
    assert proc.returncode == 0 and proc.stdout.split()[-1] == str(STEPS), proc.stderr[-3000:]
    # The general remedy, SANDBOXLOAD_ALLOW_GLOBALS, is a dead end for this file: admitting
    # the class only moves the refusal to its fields (enums, accelerate's state).
    code = (
        f"import torch, sandboxload.errors as e\ntry:\n    torch.load({path!r})\n"
        "except e.UnsafeGlobalError as refused:\n    print(refused.global_name)"
    )
    proc = run_py(code, env=clean_env(SANDBOXLOAD="1", SANDBOXLOAD_ALLOW_GLOBALS=ARGS_CLASS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = proc.stdout.split()[-1]
    assert name.startswith("transformers.") and name != ARGS_CLASS


# --- payloads --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def payload_folders(checkpoint: Path, work: Path) -> list[Path]:
    """checkpoint-3 copied once per file, that file carrying a payload that touches
    FOLDER.ran: the real state with one more entry (so a resume that runs it carries on as
    if nothing happened), and a training_args.bin that is only a payload."""
    folders = []
    for name in (*PICKLES, "training_args.bin"):
        folder = work / f"payload-{name.split('.')[0]}"
        shutil.copytree(checkpoint, folder)
        evil = Payload(Path(f"{folder}.ran"))
        if name == "training_args.bin":
            torch.save(evil, folder / name)
        else:
            state = torch.load(checkpoint / name, weights_only=False)  # trusted: ours
            torch.save({**state, "evil": evil}, folder / name)
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def attacked(payload_folders: list[Path], work: Path) -> dict[str, dict[str, Any]]:
    """A resume from each payload folder, under each way weights_only gets turned off
    (stock: not at all; env: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1; wrapper: user code forcing
    weights_only=False on every torch.load), without and with sandboxload."""
    folders = list(map(str, payload_folders))
    return {
        "plain": run("attack", work, *folders),
        "sandboxload": run("attack", work, *folders, audit=work / "attack-audit.jsonl"),
    }


@slow
def test_the_payloads_are_live_without_sandboxload(attacked: dict[str, dict[str, Any]]) -> None:
    plain = attacked["plain"]
    major = int(plain["transformers"].split(".")[0])
    for name in PICKLES:
        folder = f"payload-{name.split('.')[0]}"
        # weights_only turned off by user code: the payload runs and training carries on.
        ran = plain["wrapper"][folder]
        assert ran == {"error": None, "steps_run": STEPS - SAVED, "payload_ran": True}, name
        # Stock torch 2.13 + Trainer: torch's weights_only=True refuses it (this is not
        # sandboxload's doing; Trainer's explicit weights_only=True is what stops it).
        stock = plain["stock"][folder]
        assert stock["error"] == "UnpicklingError" and not stock["payload_ran"], name
        # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 reaches only calls without weights_only: 4.57's
        # _load_rng_state (torch.load(rng_file)); 5.x passes weights_only=True everywhere.
        env = plain["env"][folder]
        live = name == "rng_state.pth" and major < 5
        assert env["payload_ran"] is live and (env["error"] is None) is live, (name, env)
    for how in ("stock", "env", "wrapper"):  # never opened on resume
        assert plain[how]["payload-training_args"] == {
            "error": None,
            "steps_run": STEPS - SAVED,
            "payload_ran": False,
        }


@slow
def test_the_payloads_are_refused_through_trainer_train(
    attacked: dict[str, dict[str, Any]],
) -> None:
    protected = attacked["sandboxload"]
    for how in ("stock", "env", "wrapper"):
        for name in PICKLES:
            result = protected[how][f"payload-{name.split('.')[0]}"]
            # The refusal reaches the caller of trainer.train (nothing in Trainer swallows
            # it), before any step: no training on a half-restored state.
            assert result == {
                "error": "UnsafeGlobalError",
                "global": "posix.system",
                "steps_run": 0,
                "payload_ran": False,
            }, (how, name)
        result = protected[how]["payload-training_args"]
        assert result == {"error": None, "steps_run": STEPS - SAVED, "payload_ran": False}


# --- the way out, without a Trainer run ---------------------------------------------------------


@pytest.mark.usefixtures("sandboxed")
@pytest.mark.parametrize(
    ("file", "module", "name", "fits"),
    [
        ("args.bin", "transformers.training_args", "TrainingArguments", True),
        ("a.bin", "transformers.training_args_seq2seq", "Seq2SeqTrainingArguments", True),
        ("training_args.bin", "__main__", "MyArguments", True),  # a user's subclass
        ("pytorch_model.bin", "posix", "system", False),
    ],
)
def test_the_way_out_depends_on_what_the_file_is(
    tmp_path: Path, file: str, module: str, name: str, fits: bool
) -> None:
    """A pickle naming a run's arguments (the class, or Trainer's file name) is told it is
    not weights and how to read it; anything else keeps the general way out."""
    path = tmp_path / file
    path.write_bytes(b"\x80\x02" + attacks.G(module, name) + b")\x81.")  # Class.__new__()
    with pytest.raises(UnsafeGlobalError) as refused:
        torch.load(path)
    assert refused.value.global_name == f"{module}.{name}"
    message = str(refused.value)
    assert ("does not read it to resume" in message) is fits
    assert ("Get the weights as safetensors" in message) is not fits
