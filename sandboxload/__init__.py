"""sandboxload: load model weights without running anything a checkpoint carries.

Public names are resolved lazily: ``import sandboxload`` (which the start-up hook does in
every interpreter when ``SANDBOXLOAD=1``) costs almost nothing and never imports torch.
"""

TYPE_CHECKING = False  # typing is not imported: this module is on the start-up path

__version__ = "0.1.0"

__all__ = [
    "ConversionError",
    "CorruptCheckpointError",
    "FormatNotAllowedError",
    "HashMismatchError",
    "InvalidSafetensorsError",
    "ModelFolderError",
    "NotARegularFileError",
    "OfflineError",
    "PickleRefusedError",
    "PolicyError",
    "RemoteCodeRefusedError",
    "SandboxCrashedError",
    "SandboxLoadError",
    "SandboxMemoryError",
    "SandboxTimeoutError",
    "SandboxUnavailableError",
    "SandboxViolationError",
    "TorchScriptRefusedError",
    "UnknownOriginError",
    "UnpinnedFileError",
    "UnsafeGlobalError",
    "UnsupportedFormatError",
    "__version__",
    "activate",
    "is_active",
    "load",
]

_LAZY = {
    "activate": "bootstrap",
    "is_active": "bootstrap",
    "load": "api",
    "ConversionError": "errors",
    "CorruptCheckpointError": "errors",
    "FormatNotAllowedError": "errors",
    "HashMismatchError": "errors",
    "InvalidSafetensorsError": "errors",
    "ModelFolderError": "errors",
    "NotARegularFileError": "errors",
    "OfflineError": "errors",
    "PickleRefusedError": "errors",
    "PolicyError": "errors",
    "RemoteCodeRefusedError": "errors",
    "SandboxCrashedError": "errors",
    "SandboxLoadError": "errors",
    "SandboxMemoryError": "errors",
    "SandboxTimeoutError": "errors",
    "SandboxUnavailableError": "errors",
    "SandboxViolationError": "errors",
    "TorchScriptRefusedError": "errors",
    "UnknownOriginError": "errors",
    "UnpinnedFileError": "errors",
    "UnsafeGlobalError": "errors",
    "UnsupportedFormatError": "errors",
}

if TYPE_CHECKING:
    from typing import Any

    from .api import load
    from .bootstrap import activate, is_active
    from .errors import (
        CorruptCheckpointError,
        FormatNotAllowedError,
        HashMismatchError,
        InvalidSafetensorsError,
        ModelFolderError,
        NotARegularFileError,
        OfflineError,
        PickleRefusedError,
        PolicyError,
        RemoteCodeRefusedError,
        SandboxCrashedError,
        SandboxLoadError,
        SandboxMemoryError,
        SandboxTimeoutError,
        SandboxUnavailableError,
        SandboxViolationError,
        TorchScriptRefusedError,
        UnknownOriginError,
        UnpinnedFileError,
        UnsafeGlobalError,
        UnsupportedFormatError,
    )


def __getattr__(name: str) -> "Any":
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sandboxload' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
