"""Policy resolution: defaults < policy file < env (< CLI, tested in test_cli)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxload import policy
from sandboxload.cli import settings_table
from sandboxload.errors import PolicyError

from .helpers import PY, run_cli


def test_defaults() -> None:
    p = policy.resolve({})
    assert (p.pickle, p.audit_log, p.seccomp) == ("sandbox", None, True)


def test_file_then_env(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text('pickle = "allow"\naudit_log = "logs/audit.jsonl"\n')
    p = policy.resolve({"SANDBOXLOAD_POLICY": str(f)})
    assert p.pickle == "allow"
    assert p.audit_log == str(tmp_path / "logs" / "audit.jsonl")  # relative to the file
    assert p.origins["pickle"] == f"file {f}"
    p = policy.resolve(
        {"SANDBOXLOAD_POLICY": str(f), "SANDBOXLOAD_PICKLE": "refuse", "SANDBOXLOAD_AUDIT_LOG": "-"}
    )
    assert (p.pickle, p.audit_log) == ("refuse", "-")
    assert p.origins["pickle"] == "env SANDBOXLOAD_PICKLE"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"SANDBOXLOAD_PICKLE": "yes"}, ["SANDBOXLOAD_PICKLE", "sandbox, refuse, allow"]),
        (
            {"SANDBOXLOAD_POLICY": "/nonexistent/p.toml"},
            ["SANDBOXLOAD_POLICY", "/nonexistent/p.toml"],
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(PolicyError) as info:
        policy.resolve(env)
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('pickle = "sometimes"\n', "pickle in policy file"),
        ("pickle = 3\n", "sandbox, refuse, allow"),
        ('picle = "allow"\n', "unknown setting(s) picle"),
        ("pickle = \n", "not valid TOML"),
    ],
)
def test_bad_policy_file(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(PolicyError) as info:
        policy.resolve({"SANDBOXLOAD_POLICY": str(f)})
    assert needle in str(info.value) and str(f) in str(info.value)


def test_current_follows_env_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDBOXLOAD_POLICY", raising=False)
    monkeypatch.setenv("SANDBOXLOAD_PICKLE", "allow")
    assert policy.current().pickle == "allow"
    monkeypatch.setenv("SANDBOXLOAD_PICKLE", "refuse")
    assert policy.current().pickle == "refuse"
    f = tmp_path / "p.toml"
    f.write_text('audit_log = "-"\n')
    monkeypatch.setenv("SANDBOXLOAD_POLICY", str(f))
    assert policy.current().audit_log == "-"
    f.write_text('audit_log = "a.log"\n')
    assert policy.current().audit_log == str(tmp_path / "a.log")


# --- the one settings table -----------------------------------------------------------------

SAMPLE = {  # a non-default value of each setting, as text (env and flag) and as TOML
    "pickle": ("refuse", '"refuse"'),
    "remote_code": ("allow", '"allow"'),
    "formats": ("safetensors,numpy", '["safetensors", "numpy"]'),
    "manifest": ("/abs/SUMS", '"/abs/SUMS"'),
    "offline": ("on", "true"),
    "audit_log": ("-", '"-"'),
    # Importable, and accepted as they are (on the built-in list): doctor judges the names.
    "allow_globals": (
        "argparse.Namespace,collections.OrderedDict",
        '["argparse.Namespace", "collections.OrderedDict"]',
    ),
    "seccomp": ("off", "false"),
    "timeout": ("7.5", "7.5"),
    "memory_mb": ("512", "512"),
    "cpu_seconds": ("9", "9"),
    "spare": ("off", "false"),
}


def test_sample_covers_every_setting() -> None:
    assert set(SAMPLE) == {s.name for s in policy.SETTINGS}


@pytest.mark.parametrize("name", [s.name for s in policy.SETTINGS])
def test_every_setting_as_env_toml_and_flag(name: str, tmp_path: Path) -> None:
    s = policy.BY_NAME[name]
    text, toml = SAMPLE[name]
    from_env = policy.resolve({s.env: text})
    assert getattr(from_env, name) != s.default
    assert from_env.origins == {name: f"env {s.env}"}
    f = tmp_path / "p.toml"
    f.write_text(f"{s.toml_key} = {toml}\n")
    from_file = policy.resolve({policy.POLICY_FILE.env: str(f)})
    assert getattr(from_file, name) == getattr(from_env, name)
    assert from_file.origins == {name: f"file {f}"}
    # The wrapper flag: a real `python -m sandboxload --flag VALUE doctor`, which reports the
    # value and that it came from the option.
    proc = run_cli(s.flag, text, "doctor")
    line = next(x for x in proc.stdout.splitlines() if x.split()[:1] == [name])
    assert line.endswith(f"from wrapper option {s.flag}"), proc.stdout + proc.stderr


def test_a_bad_flag_names_the_flag() -> None:
    proc = run_cli("--timeout", "soon", PY, "-c", "print('ran')")
    assert proc.returncode == 2 and "ran" not in proc.stdout
    assert "--timeout = 'soon'" in proc.stderr


def test_pickle_sandbox_flag_runs_the_command() -> None:
    """The drift that made `--pickle sandbox` an argparse error is gone."""
    proc = run_cli(
        "--pickle", "sandbox", PY, "-c", "import os; print(os.environ['SANDBOXLOAD_PICKLE'])"
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "sandbox", proc.stderr


def test_docs_settings_table_is_the_table() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "settings.md").read_text()
    assert settings_table.markdown_table() in doc, "regenerate with: python scripts/docs.py"


def test_activation_flag_and_switches_share_their_words() -> None:
    from sandboxload import bootstrap

    assert bootstrap.TRUE_WORDS == policy.TRUE_WORDS
