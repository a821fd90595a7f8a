"""``python -m sandboxload`` / ``sandboxload``: the wrapper and the subcommands.

``sandboxload [OPTIONS] COMMAND [ARGS...]`` exports the activation env (so every child
process is covered), then runs COMMAND in this process if it is a console script of this
environment, or ``exec``s it otherwise. The exit code passes through.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from importlib import metadata

from . import __version__
from .bootstrap import ACTIVATE_ENV
from .errors import PolicyError

RESERVED = ("run", "scan", "convert", "pin", "verify", "doctor")
NOT_YET = ("convert",)
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")

# CLI option -> the env variable it sets (the CLI sits on top of the env in precedence).
OPTION_ENV = {
    "policy": "SANDBOXLOAD_POLICY",
    "pickle": "SANDBOXLOAD_PICKLE",
    "audit_log": "SANDBOXLOAD_AUDIT_LOG",
    "seccomp": "SANDBOXLOAD_SECCOMP",
    "allow_globals": "SANDBOXLOAD_ALLOW_GLOBALS",
    "timeout": "SANDBOXLOAD_TIMEOUT",
    "memory_mb": "SANDBOXLOAD_MEMORY_MB",
    "cpu_seconds": "SANDBOXLOAD_CPU_SECONDS",
    "remote_code": "SANDBOXLOAD_REMOTE_CODE",
    "manifest": "SANDBOXLOAD_MANIFEST",
    "formats": "SANDBOXLOAD_FORMATS",
    "offline": "SANDBOXLOAD_OFFLINE",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sandboxload",
        description="Run COMMAND with every model-weight load made safe. COMMAND is a console "
        "script of this environment (run in-process) or any program (exec'd); the "
        f"activation env ({ACTIVATE_ENV}=1 and the options below) is exported to it and to "
        "its children.",
        epilog=f"subcommands: {', '.join(RESERVED)} (use 'run -- COMMAND' to run a program "
        "that has one of these names)",
    )
    p.add_argument("--version", action="version", version=f"sandboxload {__version__}")
    p.add_argument(
        "--site-dir",
        action="store_true",
        help="print the directory to put on PYTHONPATH to activate sandboxload",
    )
    p.add_argument("--policy", metavar="FILE", help="policy TOML file (SANDBOXLOAD_POLICY)")
    p.add_argument(
        "--pickle",
        choices=("refuse", "allow"),
        help="what to do with pickle checkpoints (SANDBOXLOAD_PICKLE)",
    )
    p.add_argument(
        "--audit-log",
        metavar="PATH",
        help="append one JSON line per load decision; '-' is stderr (SANDBOXLOAD_AUDIT_LOG)",
    )
    p.add_argument(
        "--seccomp",
        choices=("on", "off"),
        help="confine the sandbox child with seccomp (SANDBOXLOAD_SECCOMP; default "
        "on; off is an explicit, unsafe opt-out)",
    )
    p.add_argument(
        "--allow-globals",
        metavar="MOD.NAME,...",
        help="extra plain data classes a pickle may name (SANDBOXLOAD_ALLOW_GLOBALS)",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        help="wall-clock limit of one sandboxed parse (SANDBOXLOAD_TIMEOUT)",
    )
    p.add_argument(
        "--memory-mb",
        metavar="MB",
        help="address-space limit of the sandbox child (SANDBOXLOAD_MEMORY_MB)",
    )
    p.add_argument(
        "--cpu-seconds",
        metavar="SECONDS",
        help="CPU limit of the sandbox child (SANDBOXLOAD_CPU_SECONDS)",
    )
    p.add_argument(
        "--remote-code",
        choices=("refuse", "allow"),
        help="code shipped with a model (auto_map, custom modules): SANDBOXLOAD_REMOTE_CODE",
    )
    p.add_argument(
        "--manifest",
        metavar="FILE",
        help="sha256sum manifest every weight file must match (SANDBOXLOAD_MANIFEST)",
    )
    p.add_argument(
        "--formats",
        metavar="LIST",
        help="allowed formats: safetensors,torch-zip,torch-legacy,numpy (SANDBOXLOAD_FORMATS)",
    )
    p.add_argument(
        "--offline", choices=("on", "off"), help="no Hugging Face downloads (SANDBOXLOAD_OFFLINE)"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="COMMAND [ARGS...]")
    return p


def _error(message: str, code: int) -> int:
    sys.stderr.write(f"sandboxload: {message}\n")
    return code


def _console_script(name: str) -> metadata.EntryPoint | None:
    for ep in metadata.entry_points(group="console_scripts", name=name):
        return ep
    return None


def _run(command: list[str]) -> int:
    from .bootstrap import activate

    name, args = command[0], command[1:]
    ep = None if os.sep in name else _console_script(name)
    if ep is not None:
        # In-process: the entry point's imports happen after activation, so they are hooked.
        activate()
        sys.argv = [shutil.which(name) or name, *args]
        result = ep.load()()
        return result if isinstance(result, int) or result is None else _error(str(result), 1)
    path = name if os.sep in name else shutil.which(name)
    if path is None or not os.path.exists(path):
        return _error(
            f"{name}: command not found (not a console script of this environment and not on PATH)",
            127,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(path, [name, *args])
    except OSError as exc:
        return _error(f"{name}: cannot execute: {exc.strerror}", 126)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int | None:
    opts = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if opts.site_dir:
        print(SITE_DIR)
        return 0
    for option, env in OPTION_ENV.items():
        value = getattr(opts, option)
        if value is not None:
            if option in ("policy", "manifest", "audit_log") and value != "-":
                value = os.path.abspath(value)  # COMMAND may run from another directory
            os.environ[env] = value
    os.environ[ACTIVATE_ENV] = "1"
    from . import policy

    try:
        policy.resolve()
    except PolicyError as exc:
        return _error(str(exc), 2)
    command = list(opts.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        return _error("no COMMAND given (see --help)", 2)
    if command[0] in RESERVED:
        return _subcommand(command[0], command[1:])
    return _run(command)


def _subcommand(name: str, args: list[str]) -> int | None:
    if name in NOT_YET:
        return _error(
            f"'{name}' is reserved for a subcommand that this version does not have yet; "
            "use 'run -- COMMAND' to run a program of that name",
            2,
        )
    if name in ("pin", "verify"):
        from . import pincli

        return int(getattr(pincli, name)(args))
    if name == "scan":
        from .scancli import scan

        return scan(args)
    if name == "doctor":
        from .doctor import run as doctor

        return doctor()
    # run [--] COMMAND: a program whose name is one of the reserved words
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        return _error("run: no COMMAND given", 2)
    return _run(args)
