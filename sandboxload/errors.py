"""Every error sandboxload raises.

Each class also derives from the built-in exception a caller would already catch for the
same situation, so existing ``except`` clauses keep working::

    SandboxLoadError (Exception)
    ├── PolicyError (ValueError)                  a setting has a value that is not accepted
    ├── PickleRefusedError (pickle.UnpicklingError)   the policy refuses pickle checkpoints
    │   ├── TorchScriptRefusedError               TorchScript archives carry code
    │   └── UnsafeGlobalError                     the pickle names something that is not data
    ├── CorruptCheckpointError (pickle.UnpicklingError)  malformed, truncated or lying file
    ├── InvalidSafetensorsError (ValueError)      a safetensors header that fails validation
    ├── UnsupportedFormatError (ValueError)       not a format (or feature) this loader reads
    ├── SandboxUnavailableError (OSError)         seccomp cannot be used here: fail closed
    ├── SandboxCrashedError (RuntimeError)        the child died or answered nonsense
    ├── SandboxTimeoutError (TimeoutError)        a load overran SANDBOXLOAD_TIMEOUT
    ├── SandboxViolationError (PermissionError)   the child tried a forbidden system call
    ├── SandboxMemoryError (MemoryError)          the child hit SANDBOXLOAD_MEMORY_MB
    ├── RemoteCodeRefusedError (ImportError)      a model asked to run its own code (*)
    ├── ModelFolderError (ValueError)             a model folder file redirects loading unsafely
    ├── HashMismatchError (PermissionError)       a pinned file's bytes are not the pinned ones
    ├── UnpinnedFileError (PermissionError)       a weight file the manifest does not list
    │   └── UnknownOriginError                    in-memory weights whose file is unknown
    ├── FormatNotAllowedError (PermissionError)   a format outside SANDBOXLOAD_FORMATS
    ├── NotARegularFileError (OSError)            a FIFO, device, socket or directory
    ├── OfflineError (ConnectionError)            a download attempted in offline mode
    └── ConversionError (ValueError)              convert: what safetensors cannot store

(*) Not an ``OSError`` nor a ``ValueError``: transformers and sentence-transformers wrap their
dynamic-module steps in ``except OSError`` / ``except (OSError, ValueError)`` and carry on, so
those bases would turn a refusal into a silent fallback. ``ImportError`` is what the caller
would see if the model's code could not be imported; and a refusal that some broader
``except`` swallows anyway is re-raised by the user-facing entry point
(:mod:`sandboxload.refusals`).

Every message names the file (or setting), what happened, and how to proceed. Errors pickle
(for ``multiprocessing``) with their message and attributes.
"""

from __future__ import annotations

import pickle
from typing import Any


def _rebuild(cls: type[SandboxLoadError], message: str, state: dict[str, Any]) -> Any:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class SandboxLoadError(Exception):
    """Base class of every sandboxload error."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


class PolicyError(SandboxLoadError, ValueError):
    """A setting (env variable, policy file, CLI option) has a value that is not accepted."""


class _FileError(SandboxLoadError):
    def __init__(self, file: str, message: str) -> None:
        self.file = file
        super().__init__(message)


class PickleRefusedError(_FileError, pickle.UnpicklingError):
    """A pickle-based checkpoint was refused."""

    def __init__(self, file: str, fmt: str, how_to: str) -> None:
        self.format = fmt
        super().__init__(
            file,
            f"sandboxload refused to unpickle {file!r} (format: {fmt}): pickle checkpoints "
            f"can run arbitrary code when loaded. {how_to}",
        )


class TorchScriptRefusedError(PickleRefusedError):
    """A TorchScript archive was passed to a weight loader; it carries code and is refused."""


class UnsafeGlobalError(PickleRefusedError):
    """The pickle names a global outside the allowlist (a function, a class that is not data)."""

    def __init__(self, file: str, module: str, name: str, fmt: str = "torch checkpoint") -> None:
        self.global_name = f"{module}.{name}"
        super().__init__(
            file,
            fmt,
            f"It names the global {self.global_name!r}, which is not on the allowlist of "
            "plain data types; nothing was imported, called or loaded. " + _remedy(file, name),
        )


def _remedy(file: str, name: str) -> str:
    """How to proceed after an :class:`UnsafeGlobalError` naming ``name`` in ``file``."""
    # A Trainer's training_args.bin pickles the run's arguments, not weights. The general
    # way out is a dead end for it: there are no weights to get as safetensors, and
    # SANDBOXLOAD_ALLOW_GLOBALS cannot admit it (its fields hold enums, which have a
    # __new__, and accelerate's state). Only the text depends on these names, which the
    # file chose; the refusal is the same for every global.
    if name.endswith("TrainingArguments") or file.endswith("training_args.bin"):
        return (
            "The file holds the arguments of a training run (transformers.Trainer saves them "
            "as training_args.bin), not weights, and Trainer does not read it to resume: "
            "train(resume_from_checkpoint=...) loads optimizer.pt, scheduler.pt and "
            "rng_state.pth, which are data. To keep the arguments readable, save them as "
            "JSON (TrainingArguments.to_json_string()); to read a file you wrote yourself, "
            "run once with SANDBOXLOAD_PICKLE=allow and torch.load(path, weights_only=False), "
            "which runs the file's code in this process."
        )
    return (
        "Get the weights as safetensors. (SANDBOXLOAD_ALLOW_GLOBALS=module.Name admits a "
        "plain data class of your own, rebuilt without running its code; functions never are.)"
    )


class CorruptCheckpointError(_FileError, pickle.UnpicklingError):
    """The file is malformed, truncated, or its parts contradict each other."""

    def __init__(self, file: str, detail: str) -> None:
        super().__init__(
            file,
            f"sandboxload could not load {file!r}: the checkpoint is malformed "
            f"({detail}). Re-download or re-export the file.",
        )


class InvalidSafetensorsError(_FileError, ValueError):
    """A file given to a safetensors loader is not a valid safetensors file."""

    def __init__(self, file: str, detail: str) -> None:
        self.detail = detail
        super().__init__(
            file,
            f"sandboxload refused {file!r}: not a valid safetensors file ({detail}). "
            "Nothing was loaded; re-download or re-export the file.",
        )


class UnsupportedFormatError(_FileError, ValueError):
    """The file is not in a format (or uses a feature) this loader reads."""

    def __init__(self, file: str, fmt: str, how_to: str) -> None:
        self.format = fmt
        super().__init__(file, f"sandboxload cannot load {file!r} (format: {fmt}). {how_to}")


class SandboxUnavailableError(_FileError, OSError):
    """The sandbox cannot be confined here; the load fails closed."""

    def __init__(self, file: str, detail: str) -> None:
        super().__init__(
            file,
            f"sandboxload will not parse {file!r}: {detail}. Install libseccomp "
            "(Debian: libseccomp2) and pyseccomp, or, knowing the child then runs without a "
            "syscall filter, set SANDBOXLOAD_SECCOMP=off; SANDBOXLOAD_PICKLE=refuse refuses "
            "pickle files instead.",
        )


class SandboxCrashedError(_FileError, RuntimeError):
    """The sandbox child died, or answered something that is not a valid description."""

    def __init__(self, file: str, detail: str, how_to: str | None = None) -> None:
        super().__init__(
            file,
            f"the sandbox parsing {file!r} failed: {detail}. "
            + (how_to or "The file is probably malformed or hostile; nothing from it was loaded."),
        )


class SandboxTimeoutError(_FileError, TimeoutError):
    """A sandboxed load (the child's parse and this process's rebuild) overran the
    wall-clock limit; the child was killed and nothing was returned."""

    def __init__(self, file: str, seconds: float, where: str = "the sandbox parsing") -> None:
        super().__init__(
            file,
            f"{where} {file!r} did not finish within {seconds:g}s and was stopped; raise "
            "SANDBOXLOAD_TIMEOUT if the file is just very large.",
        )


class SandboxViolationError(_FileError, PermissionError):
    """The sandbox child attempted a system call outside the allowlist and was killed."""

    def __init__(self, file: str, detail: str) -> None:
        super().__init__(
            file,
            f"the sandbox parsing {file!r} was stopped: {detail}. Treat the file as "
            "hostile; nothing from it was loaded.",
        )


class SandboxMemoryError(_FileError, MemoryError):
    """The sandbox child ran out of its address-space limit."""

    def __init__(self, file: str, limit_bytes: int) -> None:
        super().__init__(
            file,
            f"the sandbox parsing {file!r} ran out of its memory limit "
            f"({limit_bytes >> 20} MiB); raise SANDBOXLOAD_MEMORY_MB if the file is "
            "legitimately that large.",
        )


class RemoteCodeRefusedError(_FileError, ImportError):
    """A model (config ``auto_map``, ``modules.json``, an activation function...) asked to
    import or run code; refused unless the policy allows remote code."""

    def __init__(self, file: str, what: str) -> None:
        self.what = what
        super().__init__(
            file,
            f"sandboxload refused to run code for the model at {file!r}: {what}. Model "
            "code runs with all of this process's rights; if you have read it and trust it, "
            "set SANDBOXLOAD_REMOTE_CODE=allow.",
        )


class ModelFolderError(_FileError, ValueError):
    """A file in a model folder (index, config) points loading somewhere it must not go."""

    def __init__(self, file: str, detail: str) -> None:
        self.detail = detail
        super().__init__(
            file,
            f"sandboxload refused the model file {file!r}: {detail}. Fix or re-download "
            "the model folder.",
        )


class HashMismatchError(_FileError, PermissionError):
    """A weight file's SHA-256 (or git blob id) differs from the digest it is pinned to."""

    def __init__(
        self, file: str, expected: str, actual: str, source: str, algorithm: str = "SHA-256"
    ) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(
            file,
            f"sandboxload refused {file!r}: its {algorithm} is {actual}, but {source} pins "
            f"{expected}. The file was changed or corrupted; restore it from the vetted "
            "source (or re-pin it if the change is intended).",
        )


class UnpinnedFileError(_FileError, PermissionError):
    """A weight file that the manifest does not list."""

    def __init__(self, file: str, manifest: str) -> None:
        self.manifest = manifest
        super().__init__(
            file,
            f"sandboxload refused {file!r}: it is not listed in the manifest {manifest} "
            "(SANDBOXLOAD_MANIFEST). Add it with 'sandboxload pin' once you have vetted it.",
        )


class UnknownOriginError(UnpinnedFileError):
    """In-memory weights (bytes, a stream) that no file can be named for, under a manifest:
    a pin is a statement about one path, so bytes of unknown origin cannot be checked."""

    def __init__(self, file: str, manifest: str) -> None:
        self.manifest = manifest
        _FileError.__init__(
            self,
            file,
            f"sandboxload refused {file}: weights handed over in memory, with no file they "
            f"can be traced to, cannot be checked against the manifest {manifest} "
            "(SANDBOXLOAD_MANIFEST), whose pins name paths. Load the file by its path "
            "(torch.load(path), safetensors.torch.load_file(path)) or from an open file.",
        )


class FormatNotAllowedError(_FileError, PermissionError):
    """The file's format is not in SANDBOXLOAD_FORMATS."""

    def __init__(
        self, file: str, fmt: str, allowed: tuple[str, ...], origin: str = "SANDBOXLOAD_FORMATS"
    ) -> None:
        self.format = fmt
        super().__init__(
            file,
            f"sandboxload refused {file!r}: its bytes are {fmt}, and the format allowlist "
            f"({origin}) allows only {', '.join(allowed)}. Convert the file "
            "(sandboxload convert), or widen the allowlist where it is set.",
        )


class NotARegularFileError(_FileError, OSError):
    """A weight file that is a FIFO, a device, a socket or a directory: refused unread."""

    def __init__(self, file: str, kind: str) -> None:
        self.kind = kind
        super().__init__(
            file,
            f"sandboxload refused {file!r}: it is a {kind}, not a regular file, so nothing "
            "was read from it (reading a FIFO or a device can block or never end). Replace it "
            "with the real weight file.",
        )


class OfflineError(_FileError, ConnectionError):
    """A Hugging Face download was attempted while SANDBOXLOAD_OFFLINE is on."""

    def __init__(self, file: str, detail: str) -> None:
        super().__init__(
            file,
            f"sandboxload offline mode: {file!r} is not available locally and nothing "
            f"may be downloaded ({detail}). Bake the model into the image (or a local "
            "mirror) and load it by path, or unset SANDBOXLOAD_OFFLINE.",
        )


class ConversionError(_FileError, ValueError):
    """A checkpoint holds what safetensors cannot store, or its folder cannot be converted."""

    def __init__(self, file: str, detail: str, how_to: str) -> None:
        self.detail = detail
        super().__init__(file, f"sandboxload cannot convert {file!r}: {detail}. {how_to}")
