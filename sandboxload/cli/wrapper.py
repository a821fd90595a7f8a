"""The wrapper: options from the settings table, exported as env; then run COMMAND.

COMMAND runs in this process if it is a console script of this environment (its imports
happen after activation, so they are hooked), or is ``exec``'d otherwise; the activation env
(``SANDBOXLOAD=1`` and the options; the site dir first on ``PYTHONPATH``) covers it and every
Python child it starts. The exit code passes through; 127: not found, 126: cannot execute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import types
from importlib import metadata

from .. import __version__, policy
from ..bootstrap import ACTIVATE_ENV
from ..errors import PolicyError

SITE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "site")
OPTIONS = (policy.POLICY_FILE, *policy.SETTINGS)


def parse_args(argv: list[str], reserved: tuple[str, ...]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sandboxload",
        description="Run COMMAND with every model-weight load made safe. COMMAND is a console "
        "script of this environment (run in-process) or any program (exec'd); the "
        f"activation env ({ACTIVATE_ENV}=1 and the options below) is exported to it and to "
        "its children.",
        epilog=f"subcommands: {', '.join(reserved)} (use 'run -- COMMAND' to run a program "
        "that has one of these names)",
    )
    p.add_argument("--version", action="version", version=f"sandboxload {__version__}")
    p.add_argument(
        "--site-dir",
        action="store_true",
        help="print the directory to put on PYTHONPATH to activate sandboxload",
    )
    for s in OPTIONS:
        # No argparse choices: the setting's own parser validates, as it does for env and TOML.
        p.add_argument(s.flag, dest=s.name, metavar=s.metavar, help=f"{s.help} ({s.env})")
    p.add_argument("command", nargs=argparse.REMAINDER, help="COMMAND [ARGS...]")
    return p.parse_args(argv)


def error(message: str, code: int) -> int:
    sys.stderr.write(f"sandboxload: {message}\n")
    return code


def export_options(opts: argparse.Namespace) -> int:
    """Validate each option given, export it as its env variable; 0, or 2 on a bad value."""
    given = []
    try:
        for s in OPTIONS:
            value = getattr(opts, s.name)
            if value is None:
                continue
            s.parse(value, s.flag)
            if s.path and value not in ("", "-"):
                value = os.path.abspath(value)  # COMMAND may run from another directory
            os.environ[s.env] = value
            given.append(s.name)
        if given:
            earlier = os.environ.get(policy.WRAPPER_OPTIONS_ENV, "")
            names = sorted({*filter(None, earlier.split(",")), *given})
            os.environ[policy.WRAPPER_OPTIONS_ENV] = ",".join(names)
        os.environ[ACTIVATE_ENV] = "1"
        export_site_dir()
        policy.resolve()
    except PolicyError as exc:
        return error(str(exc), 2)
    return 0


def export_site_dir() -> None:
    """Put the site dir first on ``PYTHONPATH``, so every Python that COMMAND starts (an
    ``exec``'d script, uvicorn's ``--workers``, multiprocessing's spawn) activates.

    The exported flag alone activates only an interpreter whose site directory holds the
    start-up ``.pth``: not one where sandboxload came by ``pip install --target`` or a checkout
    on ``PYTHONPATH``, nor a child of another environment (whether the wrapper's own
    interpreter has the file says nothing of the child's). Activation is idempotent, so an
    interpreter that has both activates once.
    """
    current = os.environ.get("PYTHONPATH", "")
    if SITE_DIR not in current.split(os.pathsep):
        # The rest kept as it was (an empty entry means the working directory).
        os.environ["PYTHONPATH"] = os.pathsep.join([SITE_DIR, current]) if current else SITE_DIR


def _console_script(name: str) -> metadata.EntryPoint | None:
    for ep in metadata.entry_points(group="console_scripts", name=name):
        return ep
    return None


def _script_main(script: str) -> types.ModuleType:
    """The ``__main__`` the console script would have run as: a file, not ``-m sandboxload``.
    click and typer derive the program name from it (``Usage: infinity_emb``, not ``python -m
    sandboxload.infinity_emb``); multiprocessing's spawn re-runs it in children by path, as it
    would without the wrapper (the script's own ``__main__`` guard keeps that inert)."""
    main = types.ModuleType("__main__")
    main.__package__ = None  # what a script has; ``sandboxload`` said "-m"
    if os.path.isfile(script):
        main.__file__ = script
    return main


def run_command(command: list[str]) -> int | None:
    from ..bootstrap import activate

    name, args = command[0], command[1:]
    ep = None if os.sep in name else _console_script(name)
    if ep is not None:
        activate()
        script = shutil.which(name) or name
        sys.argv = [script, *args]
        sys.modules["__main__"] = _script_main(script)
        result = ep.load()()
        return result if isinstance(result, int) or result is None else error(str(result), 1)
    path = name if os.sep in name else shutil.which(name)
    if path is None or not os.path.exists(path):
        return error(
            f"{name}: command not found (not a console script of this environment and not on PATH)",
            127,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(path, [name, *args])
    except OSError as exc:
        return error(f"{name}: cannot execute: {exc.strerror}", 126)
    return 0  # not reached


def run_subcommand(args: list[str]) -> int | None:
    """``run [--] COMMAND``: a program whose name is one of the reserved words."""
    if args[:1] in (["-h"], ["--help"]):  # ``run -- --help`` runs a program named --help
        argparse.ArgumentParser(
            prog="sandboxload run",
            usage="%(prog)s [--] COMMAND [ARGS...]",
            description="Run COMMAND under sandboxload, as the wrapper does, even when its "
            "name is a reserved word (run, scan, convert, pin, verify, doctor).",
        ).print_help()
        return 0
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        return error("run: no COMMAND given", 2)
    return run_command(args)
