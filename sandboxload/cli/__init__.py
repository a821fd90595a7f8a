"""``python -m sandboxload`` / ``sandboxload``: the wrapper, and the subcommands it dispatches.

``sandboxload [OPTIONS] COMMAND [ARGS...]`` runs COMMAND under sandboxload (:mod:`.wrapper`);
a reserved word in COMMAND's place runs a subcommand instead, from :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import importlib
import sys

from .wrapper import error, export_options, parse_args, run_command

# Reserved word -> "module:function" taking the remaining arguments.
SUBCOMMANDS: dict[str, str] = {
    "run": "sandboxload.cli.wrapper:run_subcommand",
    "scan": "sandboxload.cli.scan:main",
    "convert": "sandboxload.cli.convert:main",
    "pin": "sandboxload.cli.pin:pin",
    "verify": "sandboxload.cli.pin:verify",
    "doctor": "sandboxload.cli.doctor:main",
}


def main(argv: list[str] | None = None) -> int | None:
    opts = parse_args(sys.argv[1:] if argv is None else argv, tuple(SUBCOMMANDS))
    if opts.site_dir:
        from .wrapper import SITE_DIR

        print(SITE_DIR)
        return 0
    code = export_options(opts)
    if code:
        return code
    command = list(opts.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        return error("no COMMAND given (see --help)", 2)
    if command[0] not in SUBCOMMANDS:
        return run_command(command)
    module, _, func = SUBCOMMANDS[command[0]].partition(":")
    result: int | None = getattr(importlib.import_module(module), func)(command[1:])
    return result
