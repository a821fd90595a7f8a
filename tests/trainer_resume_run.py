"""A real ``transformers.Trainer`` run on a tiny GPT-2 made from a config (nothing downloaded),
for ``test_trainer_resume``; run as a script in a fresh interpreter, with or without
sandboxload, on either stack. Writes one JSON object to OUT_JSON.

    trainer_resume_run.py train  RUN_DIR OUT_JSON            6 steps, a checkpoint every 3
    trainer_resume_run.py resume RUN_DIR OUT_JSON CHECKPOINT  resume, then load each file
    trainer_resume_run.py attack RUN_DIR OUT_JSON FOLDER...   resume from each (payload) folder
                                                              under each way of turning off
                                                              weights_only

Everything is recorded exactly: each loss as the float the model returned (a forward hook;
Trainer's log rounds), tensors and arrays as dtype, shape and bytes, other values with their
type, so that two runs compare with ``==``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers import trainer as trainer_module

STEPS, SAVE_EVERY = 6, 3
PICKLES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
LOAD = torch.load  # sandboxload's when it is active: it patched torch at import


def canon(x: Any) -> Any:
    """``x`` as JSON that two equal values, and only they, share (types included)."""
    kind = f"{type(x).__module__}.{type(x).__qualname__}"
    if isinstance(x, torch.Tensor):
        flat = x.detach().contiguous().reshape(-1)
        return [kind, str(x.dtype), list(x.shape), flat.view(torch.uint8).numpy().tobytes().hex()]
    if isinstance(x, np.ndarray):
        return [kind, x.dtype.str, list(x.shape), x.tobytes().hex()]
    if isinstance(x, dict):
        return [kind, [[canon(k), canon(v)] for k, v in x.items()]]
    if isinstance(x, list | tuple):
        return [kind, [canon(v) for v in x]]
    return [kind, repr(x)]


def rng_states() -> Any:
    return canon(
        {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }
    )


class Capture(TrainerCallback):
    """What Trainer restored: optimizer and scheduler once loaded (train begin), the RNG
    states as the first step after resuming begins (Trainer restores them just before)."""

    def __init__(self, seen: dict[str, Any]) -> None:
        self.seen = seen

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.seen["optimizer"] = canon(kw["optimizer"].state_dict())
        self.seen["scheduler"] = canon(kw["lr_scheduler"].state_dict())
        self.seen["scheduler_last_epoch"] = kw["lr_scheduler"].last_epoch
        self.seen["optimizer_states"] = len(kw["optimizer"].state_dict()["state"])

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.seen.setdefault("rng", rng_states())


def train(run_dir: str, resume: str | None, seen: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) the tiny model; its losses, step by step, and what Capture saw
    (recorded in ``seen`` as they happen, so a failed run still shows how far it got)."""
    torch.set_num_threads(1)  # the same reduction order in every run, on a busy machine too
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )  # dropout stays on (0.1): the losses depend on the restored RNG state
    model = GPT2LMHeadModel(config)
    ids = torch.randint(0, 64, (4 * STEPS, 8), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row, "labels": row} for row in ids.tolist()]
    seen = {} if seen is None else seen
    seen["losses"] = []
    model.register_forward_hook(lambda m, i, out: seen["losses"].append(out.loss.item()))
    args = TrainingArguments(
        output_dir=run_dir,
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=SAVE_EVERY,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[Capture(seen)])
    trainer.train(resume_from_checkpoint=resume)
    return seen


def load_as_trainer(path: Path) -> Any:
    """``path`` loaded with the arguments Trainer passes (RNG states under its NumPy
    allowlist, ``transformers.trainer.safe_globals`` in 4.57 and 5.x)."""
    if path.name == "rng_state.pth":
        with trainer_module.safe_globals():
            return torch.load(path, weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def outcome(load: Any) -> dict[str, Any]:
    try:
        return {"value": canon(load())}
    except Exception as exc:
        return {
            "error": type(exc).__name__,
            "global": getattr(exc, "global_name", None),
            "message": str(exc),
        }


def audit_lines() -> int | None:
    log = os.environ.get("SANDBOXLOAD_AUDIT_LOG")
    return len(Path(log).read_text().splitlines()) if log and Path(log).exists() else None


def resume(run_dir: str, checkpoint: str) -> dict[str, Any]:
    seen = train(run_dir, checkpoint)
    seen["audit_lines_after_train"] = audit_lines()  # the probes below are not Trainer's loads
    folder = Path(checkpoint)
    seen["as_trainer"] = {
        name: outcome(lambda n=name: load_as_trainer(folder / n)) for name in PICKLES
    }
    # torch.load's default (weights_only=True) without Trainer's NumPy allowlist, as any other
    # script loading rng_state.pth calls it.
    seen["rng_default"] = outcome(lambda: torch.load(folder / "rng_state.pth"))
    seen["args_weights_only"] = outcome(
        lambda: torch.load(folder / "training_args.bin", weights_only=True)
    )
    return seen


def flip(how: str) -> None:
    """Turn weights_only off the ways projects do (torch 2.6 made it the default): torch's
    env switch (it only reaches calls that do not pass weights_only), or a wrapper that
    forces weights_only=False on every call."""
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    torch.load = LOAD
    if how == "env":
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    elif how == "wrapper":

        def forced(*args: Any, **kwargs: Any) -> Any:
            kwargs["weights_only"] = False
            return LOAD(*args, **kwargs)

        torch.load = forced


def attack(run_dir: str, folders: list[str]) -> dict[str, Any]:
    """Resume from each folder under each flip: {flip: {folder: what happened}}. A folder's
    payload touches FOLDER.ran; it is recorded, then removed for the next flip."""
    out: dict[str, Any] = {}
    for how in ("stock", "env", "wrapper"):
        flip(how)
        out[how] = {}
        for folder in folders:
            seen: dict[str, Any] = {}
            try:
                train(f"{run_dir}/{how}-{Path(folder).name}", folder, seen)
                result: dict[str, Any] = {"error": None}
            except Exception as exc:  # what reaches the caller of trainer.train
                result = {"error": type(exc).__name__, "global": getattr(exc, "global_name", None)}
            result["steps_run"] = len(seen.get("losses", []))
            canary = Path(f"{folder}.ran")  # the payload's file (see the test's payload folders)
            result["payload_ran"] = canary.exists()
            canary.unlink(missing_ok=True)
            out[how][Path(folder).name] = result
    flip("stock")
    return out


def main() -> None:
    mode, run_dir, out = sys.argv[1:4]
    if mode == "train":
        result = train(run_dir, None)
    elif mode == "resume":
        result = resume(run_dir, sys.argv[4])
    else:
        result = attack(run_dir, sys.argv[4:])
    result["transformers"] = transformers.__version__
    result["sandboxload"] = (
        "sandboxload.bootstrap" in sys.modules and sys.modules["sandboxload.bootstrap"].is_active()
    )
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
