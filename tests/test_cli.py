"""The wrapper: python -m sandboxload [OPTIONS] COMMAND [ARGS...]."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import PY, clean_env, console_script, run_cli


@pytest.fixture
def fake_console_script(tmp_path: Path, malicious: dict[str, Path]) -> dict[str, str]:
    """A console script ``fakecmd`` of a tiny installed distribution, visible via PYTHONPATH."""
    site = console_script(
        tmp_path / "fakesite",
        "fakecmd",
        "fakemod",
        "import json, os, subprocess, sys\n"
        "def main():\n"
        "    import torch, sandboxload\n"
        "    try:\n"
        f"        torch.load({str(malicious['zip'])!r}, weights_only=False)\n"
        "        here = 'loaded'\n"
        "    except sandboxload.PickleRefusedError:\n        here = 'refused'\n"
        "    child = subprocess.run([sys.executable, '-c', 'import torch; torch.load('\n"
        f"        + repr({str(malicious['legacy'])!r}) + ', weights_only=False)'],\n"
        "        capture_output=True, text=True)\n"
        "    print(json.dumps({'argv': sys.argv[1:], 'here': here,\n"
        "        'in_process': 'sandboxload.cli' in sys.modules,\n"
        "        'child_refused': 'sandboxload refused to unpickle' in child.stderr}))\n"
        "    return 3\n",
    )
    return clean_env(PYTHONPATH=str(site))


def test_console_script_runs_in_process_and_children_are_covered(
    fake_console_script: dict[str, str], canary: Path
) -> None:
    proc = run_cli("fakecmd", "a", "--b", env=fake_console_script)
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {
        "argv": ["a", "--b"],
        "here": "refused",
        "in_process": True,
        "child_refused": True,
    }
    assert not canary.exists()


def test_other_commands_are_execd_with_the_env(checkpoints: dict[str, Path]) -> None:
    code = (
        "import os, sys, torch, sandboxload\n"
        f"try:\n    torch.load({str(checkpoints['zip'])!r})\n"
        "except sandboxload.PickleRefusedError:\n    print('refused')\n"
        "print('sandboxload.cli' in sys.modules, os.environ['SANDBOXLOAD'])\n"
        "sys.exit(7)\n"
    )
    proc = run_cli("--pickle", "refuse", PY, "-c", code)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.split() == ["refused", "False", "1"]
    proc = run_cli("run", "--", PY, "-c", "import sys; sys.exit(5)")
    assert proc.returncode == 5


def test_options_become_env_for_the_command(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    code = "import os; print(os.environ['SANDBOXLOAD_PICKLE'], os.environ['SANDBOXLOAD_AUDIT_LOG'])"
    env = clean_env(SANDBOXLOAD_PICKLE="refuse")  # the CLI option wins over the env
    proc = run_cli("--pickle", "allow", "--audit-log", str(log), PY, "-c", code, env=env)
    assert proc.stdout.split() == ["allow", str(log)], proc.stderr


def test_unknown_command_is_127() -> None:
    proc = run_cli("no-such-command-xyz", "arg")
    assert proc.returncode == 127
    assert "no-such-command-xyz: command not found" in proc.stderr


def test_bad_policy_is_rejected_before_running(tmp_path: Path) -> None:
    proc = run_cli(PY, "-c", "print('ran')", env=clean_env(SANDBOXLOAD_PICKLE="maybe"))
    assert proc.returncode == 2 and "ran" not in proc.stdout
    assert "SANDBOXLOAD_PICKLE" in proc.stderr and "sandbox, refuse, allow" in proc.stderr


def test_version_help_and_reserved_words() -> None:
    assert run_cli("--version").stdout.startswith("sandboxload 0.")
    helptext = run_cli("--help").stdout
    for word in ("--pickle", "--audit-log", "--policy", "--site-dir", "run -- COMMAND"):
        assert word in helptext
    proc = run_cli("convert", "x")  # a subcommand, not a program named convert
    assert proc.returncode == 2 and "sandboxload convert: x:" in proc.stderr, proc.stderr
    assert run_cli().returncode == 2


def test_console_script_entry_point(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "sandboxload"
    assert exe.exists()
    proc = subprocess.run(
        [str(exe), PY, "-c", "import os; print(os.environ['SANDBOXLOAD'])"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "1", proc.stderr
    assert os.access(exe, os.X_OK)


def test_doctor_proves_the_filter() -> None:
    proc = run_cli("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "killed by seccomp" in proc.stdout and "activates a new interpreter" in proc.stdout
    proc = run_cli("--seccomp", "off", "doctor")
    assert proc.returncode == 1 and "SANDBOXLOAD_SECCOMP=off" in proc.stdout


def test_scan(tmp_path: Path, malicious: dict[str, Path], canary: Path) -> None:
    import safetensors.torch
    import torch

    models = tmp_path / "models"
    models.mkdir()
    safetensors.torch.save_file({"w": torch.ones(2)}, str(models / "a.safetensors"))
    torch.save({"w": torch.ones(2)}, models / "b.bin")
    proc = run_cli("scan", "--json", str(models))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdicts = {Path(r["file"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert verdicts["a.safetensors"]["verdict"] == "ok"
    assert verdicts["b.bin"]["verdict"] == "ok" and "only data" in verdicts["b.bin"]["detail"]
    (models / "c.pt").write_bytes(malicious["zip"].read_bytes())
    proc = run_cli("scan", str(models))
    assert proc.returncode == 1 and "posix.system" in proc.stdout
    assert run_cli("scan", str(tmp_path / "missing.bin")).returncode == 2


def test_verify_without_its_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    """Issue 12: a missing manifest was a raw ``[Errno 2] ...``."""
    proc = run_cli("verify", "--manifest", str(tmp_path / "SHA256SUMS"))
    assert proc.returncode == 2
    assert "[Errno" not in proc.stderr
    assert "cannot read the manifest" in proc.stderr and "sandboxload pin" in proc.stderr
    assert str(tmp_path / "SHA256SUMS") in proc.stderr


def test_a_load_under_a_missing_manifest_is_a_policy_error(tmp_path: Path) -> None:
    code = (
        "import torch, sandboxload\n"
        f"torch.save({{'w': torch.ones(1)}}, {str(tmp_path / 'w.pt')!r})\n"
        "try:\n"
        f"    torch.load({str(tmp_path / 'w.pt')!r})\n"
        "except sandboxload.PolicyError as exc:\n"
        "    print('PolicyError', 'sandboxload pin' in str(exc))\n"
    )
    env = clean_env(SANDBOXLOAD="1", SANDBOXLOAD_MANIFEST=str(tmp_path / "nope"))
    proc = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["PolicyError", "True"]
