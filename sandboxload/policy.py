"""THE settings table, and its resolution: defaults < policy file < ``SANDBOXLOAD_*`` env < CLI.

Each field of :class:`Policy` is one setting, declared once with :func:`setting`: its default,
parser, help and metavar. From that one declaration come its env variable
(``SANDBOXLOAD_<NAME>``), its key in a TOML policy file (``<name>``), its wrapper flag
(``--<name-with-dashes>``), ``doctor``'s report and the docs' table
(``docs/settings.md``, checked by a test). The wrapper exports its options as the env
variables (so child processes inherit the policy) and names them in
``SANDBOXLOAD_WRAPPER_OPTIONS``, so every process reports where a value really came from.
A bad value raises :class:`PolicyError` naming the setting, its origin and what is accepted.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

from .errors import PolicyError
from .formats import POLICY_FORMATS

ENV_PREFIX = "SANDBOXLOAD_"
PICKLE_MODES = ("sandbox", "refuse", "allow")
REMOTE_CODE_MODES = ("refuse", "allow")
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
Parser = Callable[[Any, str], Any]


def _choice(accepted: tuple[str, ...]) -> Parser:
    def parse(value: Any, origin: str) -> str:
        word = str(value).strip().lower()
        if not isinstance(value, str) or word not in accepted:
            raise PolicyError(
                f"{origin} = {value!r} is not accepted; use one of: {', '.join(accepted)}"
            )
        return word

    return parse


def _switch(value: Any, origin: str) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise PolicyError(f"{origin} = {value!r} is not accepted; use on or off (1/0, true/false)")


def _names(what: str, check: Callable[[str, str], None]) -> Parser:
    def parse(value: Any, origin: str) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
            raise PolicyError(f"{origin} must be a comma-separated list of {what}")
        names = tuple(x.strip() for x in items if x.strip())
        for name in names:
            check(name, origin)
        return names

    return parse


def _dotted(name: str, origin: str) -> None:
    module, _, attr = name.rpartition(".")
    if not module or not all(p.isidentifier() for p in (*module.split("."), attr)):
        raise PolicyError(f"{origin}: {name!r} is not a dotted global name (module.Name)")


# What a rebuild of an instance (``object.__new__`` then ``obj.__dict__.update``) or its
# garbage collection would run of the class's own code. (Hashing and comparing would too:
# the rebuild never uses an allowed class's instance as a dict key or set member.)
RUNS_CODE = ("__setstate__", "__getattribute__", "__getattr__", "__del__")
_DICT_SLOT = type(vars(type("_Plain", (), {}))["__dict__"])  # the ordinary __dict__ getset


def not_plain_data(obj: Any) -> str | None:
    """Why ``obj`` cannot be an allowed extra global, or None: it must be a class whose
    instances are rebuilt as ``object.__new__(cls)`` plus a ``__dict__`` update, so none of its
    code runs. The parent's rebuild applies the same rule. torch is only looked at if imported
    (a class that subclasses its Tensor implies it is)."""
    if not isinstance(obj, type):
        if callable(obj):
            return "is a function, not a class, and functions are never admitted"
        return f"is a {type(obj).__name__} value, not a class"
    if obj.__new__ is not object.__new__:
        return "is not a plain data class (it has a __new__ of its own)"
    for base in obj.__mro__[:-1]:  # inherited code runs as well as its own (an attack review)
        own = vars(base)
        runs = next((m for m in RUNS_CODE if m in own), None)
        if runs is None and "__dict__" in own and type(own["__dict__"]) is not _DICT_SLOT:
            runs = "__dict__"
        if runs is not None:
            whose = "" if base is obj else f", inherited from {base.__qualname__}"
            return f"is not a plain data class (it defines {runs}{whose})"
    if not obj.__dictoffset__:
        return "is not a plain data class (its instances have no __dict__)"
    torch = sys.modules.get("torch")
    if issubclass(obj, BaseException) or (torch is not None and issubclass(obj, torch.Tensor)):
        return "is not a plain data class (it is an exception or a tensor)"
    return None


def _built_in(name: str) -> bool:
    """On the sandbox's own allowlist already (``collections.OrderedDict``): naming it again
    changes nothing, whatever it is."""
    from .sandbox.child.allowlist import ALLOWED  # stdlib only; imported for a failing name

    module, _, attr = name.rpartition(".")
    return (module, attr) in ALLOWED


def _refuse_global(origin: str, name: str, problem: str) -> PolicyError:
    return PolicyError(
        f"{origin}: {name!r} {problem}. Allowed globals are classes whose instances are "
        "rebuilt as plain data (made without calling the class, attributes set from the "
        "file): no __new__, __setstate__, __getattribute__, __getattr__ or __del__ of their "
        "own or inherited, not a tensor or an exception. "
        f"Remove {name!r} from the setting"
    )


def _allowed_global(name: str, origin: str) -> None:
    _dotted(name, origin)
    module, _, attr = name.rpartition(".")
    # Judged now only if its module is already imported, and without running any of it (a
    # lazy module's __getattr__ could import anything): resolution runs at start-up, where
    # importing the operator's modules (torch...) would slow every interpreter. The rest is
    # judged by the first load that needs them (allowed_globals).
    found = getattr(sys.modules.get(module), "__dict__", {}).get(attr)
    problem = None if found is None else not_plain_data(found)
    if problem and not _built_in(name):
        raise _refuse_global(origin, name, problem)


_judged: set[str] = set()


def allowed_globals(pol: Policy) -> tuple[str, ...]:
    """``pol.allow_globals``, each name imported and judged by :func:`not_plain_data` (once
    per process): a PolicyError naming the setting and its origin, before anything is parsed."""
    origin = f"allow_globals ({pol.origins.get('allow_globals', 'default')})"
    for name in pol.allow_globals:
        if name in _judged or _built_in(name):
            continue
        module, _, attr = name.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), attr)
        except Exception as exc:  # the operator's module failing in any way: typed, named
            raise PolicyError(
                f"{origin}: {name!r} cannot be imported ({exc!r}); fix the name, or install "
                "its module in this environment"
            ) from exc
        problem = not_plain_data(found)
        if problem:
            raise _refuse_global(origin, name, problem)
        _judged.add(name)
    return pol.allow_globals


def _formats(value: Any, origin: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
        raise PolicyError(
            f"{origin} must be a comma-separated list of: {', '.join(POLICY_FORMATS)}"
        )
    names = tuple(x.strip().lower() for x in items if x.strip())
    unknown = [n for n in names if n not in POLICY_FORMATS]
    if unknown or not names:
        raise PolicyError(
            f"{origin} = {value!r}: unknown format(s) {', '.join(unknown) or '(none)'}; "
            f"use a comma-separated list of: {', '.join(POLICY_FORMATS)}"
        )
    return names


def _path(value: Any, origin: str) -> str | None:
    if not isinstance(value, str):
        raise PolicyError(f"{origin} = {value!r} must be a file path")
    return value.strip() or None


def _number(kind: type, low: float) -> Parser:
    noun = "an int" if kind is int else f"a {kind.__name__}"

    def parse(value: Any, origin: str) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, bool) or number < low:
            raise PolicyError(f"{origin} = {value!r} must be {noun} >= {low:g}")
        return number

    return parse


def setting(default: Any, parse: Parser, help: str, metavar: str, *, path: bool = False) -> Any:
    """Declare one setting (a field of :class:`Policy`)."""
    meta = {"parse": parse, "help": help, "metavar": metavar, "path": path}
    return field(default=default, metadata={"setting": meta})


@dataclass(frozen=True)
class Policy:
    """The effective settings for one load decision; each field is one setting."""

    pickle: str = setting(
        "sandbox",
        _choice(PICKLE_MODES),
        "pickle checkpoints: parse in the confined child, refuse, or load in-process (audited)",
        "{sandbox,refuse,allow}",
    )
    remote_code: str = setting(
        "refuse",
        _choice(REMOTE_CODE_MODES),
        "code shipped with a model (auto_map, custom modules)",
        "{refuse,allow}",
    )
    formats: tuple[str, ...] = setting(
        (),
        _formats,
        f"formats allowed to load (default: all): {','.join(POLICY_FORMATS)}",
        "LIST",
    )
    manifest: str | None = setting(
        None, _path, "sha256sum manifest every weight file must match", "FILE", path=True
    )
    offline: bool = setting(False, _switch, "no Hugging Face downloads", "{on,off}")
    audit_log: str | None = setting(
        None, _path, "append one JSON line per load decision; '-' is stderr", "PATH", path=True
    )
    allow_globals: tuple[str, ...] = setting(
        (),
        _names("module.Name classes", _allowed_global),
        "extra plain data classes a pickle may name (rebuilt without running their code)",
        "MOD.NAME,...",
    )
    seccomp: bool = setting(
        True,
        _switch,
        "confine the sandbox child with seccomp; off is an explicit, unsafe opt-out",
        "{on,off}",
    )
    timeout: float = setting(
        300.0,
        _number(float, 0.001),
        "wall-clock limit of one sandboxed load (parse and rebuild)",
        "SECONDS",
    )
    memory_mb: int | None = setting(
        None,
        _number(int, 32),
        "address-space limit of the sandbox child (default: 1 GiB + twice the file)",
        "MB",
    )
    cpu_seconds: int = setting(300, _number(int, 1), "CPU limit of the sandbox child", "SECONDS")
    spare: bool = setting(
        True, _switch, "keep a sandbox worker started before it is needed", "{on,off}"
    )
    # Where each non-default value came from ("env SANDBOXLOAD_PICKLE", "file /etc/x.toml").
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Setting:
    """One row of the settings table, derived from a :class:`Policy` field."""

    name: str
    default: Any
    parse: Parser
    help: str
    metavar: str
    path: bool

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def toml_key(self) -> str:
        return self.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.name, f.default, **f.metadata["setting"])
    for f in fields(Policy)
    if "setting" in f.metadata
)
BY_NAME = {s.name: s for s in SETTINGS}
# The policy file itself: an env variable and a wrapper flag, not a key of the file.
POLICY_FILE = Setting("policy", None, _path, "policy TOML file", "FILE", path=True)
# Set by the wrapper: the settings it exported from its own options (for origins only).
WRAPPER_OPTIONS_ENV = ENV_PREFIX + "WRAPPER_OPTIONS"
ENV_NAMES = (POLICY_FILE.env, WRAPPER_OPTIONS_ENV, *(s.env for s in SETTINGS))


def _read_file(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise PolicyError(
            f"{POLICY_FILE.env}={path!r}: cannot read the policy file ({exc.strerror}); "
            "fix the path or unset the variable"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {path!r} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(BY_NAME))
    if unknown:
        raise PolicyError(
            f"policy file {path!r}: unknown setting(s) {', '.join(unknown)}; "
            f"known settings are: {', '.join(sorted(BY_NAME))}"
        )
    base = os.path.dirname(os.path.abspath(path))
    for s in SETTINGS:
        value = data.get(s.toml_key)
        if s.path and isinstance(value, str) and value not in ("", "-"):
            # Paths in a policy file are relative to the file, not to wherever the app runs.
            data[s.toml_key] = os.path.join(base, value)
    return data


def resolve(env: Mapping[str, str] | None = None) -> Policy:
    """Resolve the policy from ``env`` (default: ``os.environ``), with each value's origin."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    path = env.get(POLICY_FILE.env, "").strip()
    if path:
        raw = _read_file(path)
        for s in SETTINGS:
            if s.toml_key in raw:
                values[s.name] = s.parse(raw[s.toml_key], f"{s.toml_key} in policy file {path!r}")
                origins[s.name] = f"file {path}"
    from_wrapper = set(env.get(WRAPPER_OPTIONS_ENV, "").split(","))
    for s in SETTINGS:
        if s.env in env:
            by_wrapper = s.name in from_wrapper
            values[s.name] = s.parse(env[s.env], s.flag if by_wrapper else s.env)
            origins[s.name] = f"wrapper option {s.flag}" if by_wrapper else f"env {s.env}"
    return Policy(**values, origins=origins)


@lru_cache(maxsize=8)
def _cached(items: tuple[tuple[str, str], ...], file_stamp: tuple[int, int] | None) -> Policy:
    return resolve(dict(items))


# Settings fixed for one tool's own loads (convert parses in the sandbox whatever ``pickle``
# and ``formats`` say), with where they came from: see :func:`overridden`.
_override: ContextVar[tuple[str, tuple[tuple[str, Any], ...]] | None] = ContextVar("_override")


@contextmanager
def overridden(origin: str, **values: Any) -> Iterator[None]:
    """In this context (thread or task), :func:`current` has ``values`` from ``origin``."""
    token = _override.set((origin, tuple(values.items())))
    try:
        yield
    finally:
        _override.reset(token)


def current() -> Policy:
    """The policy for this moment, re-resolved only when the env or the policy file changed."""
    pol = _resolved()
    override = _override.get(None)
    if override is None:
        return pol
    origin, values = override
    origins = {**pol.origins, **{name: origin for name, _ in values}}
    return replace(pol, **dict(values), origins=origins)


def _resolved() -> Policy:
    items = tuple((n, os.environ[n]) for n in ENV_NAMES if n in os.environ)
    stamp = None
    path = os.environ.get(POLICY_FILE.env, "").strip()
    if path:
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None  # resolve() reports the unreadable file
    return _cached(items, stamp)
