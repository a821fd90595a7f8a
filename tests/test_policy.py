"""Policy resolution: defaults < policy file < env (< CLI, tested in test_cli)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxload import policy
from sandboxload.errors import PolicyError


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
