"""Every error sandboxload raises.

Each class also derives from the built-in exception a caller would already catch for the
same situation, so existing ``except`` clauses keep working::

    SandboxLoadError (Exception)
    ├── PolicyError (ValueError)              a setting has a value sandboxload does not accept
    ├── PickleRefusedError (pickle.UnpicklingError)
    │   └── TorchScriptRefusedError           TorchScript archives carry code: never loaded
    └── UnsupportedFormatError (ValueError)   the bytes are not a format this loader reads

Every message names the file (or setting), what was refused and how to proceed.
"""

from __future__ import annotations

import pickle


class SandboxLoadError(Exception):
    """Base class of every sandboxload error."""


class PolicyError(SandboxLoadError, ValueError):
    """A setting (env variable, policy file, CLI option) has a value that is not accepted."""


class PickleRefusedError(SandboxLoadError, pickle.UnpicklingError):
    """A pickle-based checkpoint was refused by the policy."""

    def __init__(self, file: str, fmt: str, how_to: str) -> None:
        self.file = file
        self.format = fmt
        super().__init__(
            f"sandboxload refused to unpickle {file!r} (format: {fmt}): pickle checkpoints can "
            f"run arbitrary code when loaded. {how_to}"
        )


class TorchScriptRefusedError(PickleRefusedError):
    """A TorchScript archive was passed to a weight loader; it carries code and is refused."""


class UnsupportedFormatError(SandboxLoadError, ValueError):
    """The file is not in a format this loader reads."""

    def __init__(self, file: str, fmt: str, how_to: str) -> None:
        self.file = file
        self.format = fmt
        super().__init__(f"sandboxload cannot load {file!r} (format: {fmt}). {how_to}")
