"""The public surface: __all__, the error tree, lazy imports."""

from __future__ import annotations

import pickle

import sandboxload
from sandboxload import errors


def test_all_is_sorted_and_complete() -> None:
    assert sandboxload.__all__ == sorted(sandboxload.__all__)
    for name in sandboxload.__all__:
        assert getattr(sandboxload, name) is not None
    public_errors = {
        n
        for n in dir(errors)
        if n.endswith("Error")
        and not n.startswith("_")
        and isinstance(getattr(errors, n), type)
        and issubclass(getattr(errors, n), errors.SandboxLoadError)
    }
    assert public_errors <= set(sandboxload.__all__)


def test_errors_derive_from_builtins() -> None:
    assert issubclass(errors.PickleRefusedError, pickle.UnpicklingError)
    assert issubclass(errors.TorchScriptRefusedError, errors.PickleRefusedError)
    assert issubclass(errors.PolicyError, ValueError)
    assert issubclass(errors.UnsupportedFormatError, ValueError)
    for cls in (errors.PickleRefusedError, errors.PolicyError, errors.UnsupportedFormatError):
        assert issubclass(cls, errors.SandboxLoadError)


def test_messages_name_file_and_way_forward() -> None:
    e = errors.PickleRefusedError("/m/pytorch_model.bin", "torch-zip", "Do X.")
    assert "/m/pytorch_model.bin" in str(e) and "Do X." in str(e)
    assert e.file == "/m/pytorch_model.bin"


def test_unknown_attribute() -> None:
    try:
        sandboxload.nope  # noqa: B018
    except AttributeError as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("expected AttributeError")
