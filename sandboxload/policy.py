"""Settings, resolved in one place: defaults < policy file < ``SANDBOXLOAD_*`` env < CLI.

The wrapper turns its options into ``SANDBOXLOAD_*`` variables before running the command, so
"CLI over env" holds and child processes inherit the same policy. A bad value raises
:class:`PolicyError` naming the setting, where it came from, and the accepted values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .bootstrap import is_true
from .errors import PolicyError

__all__ = [
    "ENV_NAMES",
    "PICKLE_MODES",
    "POLICY_ENV",
    "Policy",
    "PolicyError",
    "current",
    "is_true",
    "resolve",
]

POLICY_ENV = "SANDBOXLOAD_POLICY"
PICKLE_MODES = ("sandbox", "refuse", "allow")


@dataclass(frozen=True)
class Policy:
    """The effective settings for one load decision."""

    pickle: str = "sandbox"
    audit_log: str | None = None
    seccomp: bool = True
    allow_globals: tuple[str, ...] = ()
    timeout: float = 300.0
    memory_mb: int | None = None  # None: 1 GiB plus twice the checkpoint's size
    cpu_seconds: int = 300
    remote_code: str = "refuse"
    spare: bool = True
    manifest: str | None = None
    formats: tuple[str, ...] = ()  # empty: every format the loaders read
    offline: bool = False
    # Where each non-default value came from ("env SANDBOXLOAD_PICKLE", "file /etc/x.toml").
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)


def _choice(accepted: tuple[str, ...]) -> Callable[[Any, str], str]:
    def parse(value: Any, origin: str) -> str:
        word = str(value).strip().lower()
        if not isinstance(value, str) or word not in accepted:
            raise PolicyError(
                f"{origin} = {value!r} is not accepted; use one of: {', '.join(accepted)}"
            )
        return word

    return parse


def _audit_target(value: Any, origin: str) -> str | None:
    if not isinstance(value, str):
        raise PolicyError(f"{origin} = {value!r} must be a file path, or '-' for stderr")
    value = value.strip()
    return value or None


def _switch(value: Any, origin: str) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise PolicyError(f"{origin} = {value!r} is not accepted; use on or off (1/0, true/false)")


def _globals(value: Any, origin: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
        raise PolicyError(f"{origin} must be a comma-separated list of module.Name globals")
    names = tuple(x.strip() for x in items if x.strip())
    for name in names:
        module, _, attr = name.rpartition(".")
        if not module or not all(p.isidentifier() for p in (*module.split("."), attr)):
            raise PolicyError(f"{origin}: {name!r} is not a dotted global name (module.Name)")
    return names


FORMAT_NAMES = ("safetensors", "torch-zip", "torch-legacy", "numpy")


def _formats(value: Any, origin: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
        raise PolicyError(f"{origin} must be a comma-separated list of: {', '.join(FORMAT_NAMES)}")
    names = tuple(x.strip().lower() for x in items if x.strip())
    unknown = [n for n in names if n not in FORMAT_NAMES]
    if unknown or not names:
        raise PolicyError(
            f"{origin} = {value!r}: unknown format(s) {', '.join(unknown) or '(none)'}; "
            f"use a comma-separated list of: {', '.join(FORMAT_NAMES)}"
        )
    return names


def _path(value: Any, origin: str) -> str | None:
    if not isinstance(value, str):
        raise PolicyError(f"{origin} = {value!r} must be a file path")
    return value.strip() or None


def _number(kind: type, low: float) -> Callable[[Any, str], Any]:
    def parse(value: Any, origin: str) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, bool) or number < low:
            raise PolicyError(f"{origin} = {value!r} must be a {kind.__name__} >= {low:g}")
        return number

    return parse


@dataclass(frozen=True)
class _Setting:
    name: str
    env: str
    parse: Callable[[Any, str], Any]


SETTINGS = (
    _Setting("pickle", "SANDBOXLOAD_PICKLE", _choice(PICKLE_MODES)),
    _Setting("audit_log", "SANDBOXLOAD_AUDIT_LOG", _audit_target),
    _Setting("seccomp", "SANDBOXLOAD_SECCOMP", _switch),
    _Setting("allow_globals", "SANDBOXLOAD_ALLOW_GLOBALS", _globals),
    _Setting("timeout", "SANDBOXLOAD_TIMEOUT", _number(float, 0.001)),
    _Setting("memory_mb", "SANDBOXLOAD_MEMORY_MB", _number(int, 32)),
    _Setting("cpu_seconds", "SANDBOXLOAD_CPU_SECONDS", _number(int, 1)),
    _Setting("remote_code", "SANDBOXLOAD_REMOTE_CODE", _choice(("refuse", "allow"))),
    _Setting("spare", "SANDBOXLOAD_SPARE", _switch),
    _Setting("manifest", "SANDBOXLOAD_MANIFEST", _path),
    _Setting("formats", "SANDBOXLOAD_FORMATS", _formats),
    _Setting("offline", "SANDBOXLOAD_OFFLINE", _switch),
)
ENV_NAMES = (POLICY_ENV, *(s.env for s in SETTINGS))


def _read_file(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise PolicyError(
            f"{POLICY_ENV}={path!r}: cannot read the policy file ({exc.strerror}); "
            "fix the path or unset the variable"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {path!r} is not valid TOML: {exc}") from exc
    known = {s.name for s in SETTINGS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PolicyError(
            f"policy file {path!r}: unknown setting(s) {', '.join(unknown)}; "
            f"known settings are: {', '.join(sorted(known))}"
        )
    base = os.path.dirname(os.path.abspath(path))
    for key in ("audit_log", "manifest"):
        if isinstance(data.get(key), str) and data[key] not in ("", "-"):
            # Paths in a policy file are relative to the file, not to wherever the app runs.
            data[key] = os.path.join(base, data[key])
    return data


def resolve(env: Mapping[str, str] | None = None) -> Policy:
    """Resolve the policy from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    path = env.get(POLICY_ENV, "").strip()
    if path:
        raw = _read_file(path)
        for s in SETTINGS:
            if s.name in raw:
                values[s.name] = s.parse(raw[s.name], f"{s.name} in policy file {path!r}")
                origins[s.name] = f"file {path}"
    for s in SETTINGS:
        if s.env in env:
            values[s.name] = s.parse(env[s.env], s.env)
            origins[s.name] = f"env {s.env}"
    return Policy(**values, origins=origins)


@lru_cache(maxsize=8)
def _cached(items: tuple[tuple[str, str], ...], file_stamp: tuple[int, int] | None) -> Policy:
    return resolve(dict(items))


def current() -> Policy:
    """The policy for this moment, re-resolved only when the env or the policy file changed."""
    items = tuple((n, os.environ[n]) for n in ENV_NAMES if n in os.environ)
    stamp = None
    path = os.environ.get(POLICY_ENV, "").strip()
    if path:
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None  # resolve() reports the unreadable file
    return _cached(items, stamp)
