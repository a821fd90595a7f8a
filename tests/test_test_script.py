"""``scripts/test.sh`` (the README's test command, and CI's) runs both stacks whatever the
first one does, reports each, and fails if either failed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .helpers import clean_env

ROOT = Path(__file__).resolve().parent.parent
FAILS_ON = """
import transformers

def test_stack():
    assert not transformers.__version__.startswith({prefix!r})
"""


@pytest.mark.skipif(
    not (ROOT / ".venv-infinity/bin/python").exists(), reason="needs both stacks set up"
)
@pytest.mark.parametrize(("prefix", "failing"), [("5.", "latest"), ("4.", "infinity")])
def test_both_stacks_run_and_report(tmp_path: Path, prefix: str, failing: str) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(FAILS_ON.format(prefix=prefix))
    proc = subprocess.run(
        ["bash", "scripts/test.sh", "-q"],
        cwd=ROOT,
        env=clean_env(SANDBOXLOAD_TEST_ONLY=str(probe)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    passing = {"latest": "infinity", "infinity": "latest"}[failing]
    summary = proc.stdout[proc.stdout.rindex("== summary") :]
    assert f"{failing} stack: FAILED" in summary, proc.stdout[-3000:]
    assert f"{passing} stack: passed" in summary, proc.stdout[-3000:]
    assert proc.returncode == 1
