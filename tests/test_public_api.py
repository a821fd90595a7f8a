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


def _tree(text: str) -> list[tuple[int, str, str | None]]:
    """(depth, class name, built-in base or None) for each line of an error tree block."""
    import re
    import textwrap

    block = re.search(r"^([ ]*SandboxLoadError \(Exception\)\n(?:.*[├└].*\n?)+)", text, re.M)
    assert block is not None
    rows = []
    for line in textwrap.dedent(block.group(1)).strip("\n").splitlines():
        m = re.match(r"^([│ ├└─]*)(\w+)(?: \(([\w.]+)\))?", line.strip("\n").lstrip())
        assert m is not None, line
        prefix = line[: line.index(m.group(2))]
        rows.append((len(prefix) // 4, m.group(2), m.group(3)))
    return rows


def test_documented_error_tree_is_the_real_one() -> None:
    """docs/errors.md shows errors.py's tree, and the tree is the class hierarchy: every class,
    its sandboxload parent, and the built-in it also derives from."""
    import builtins
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "errors.md").read_text()
    rows = _tree(doc)
    assert rows == _tree(errors.__doc__ or "")
    classes = {
        n: c
        for n, c in vars(errors).items()
        if isinstance(c, type) and issubclass(c, errors.SandboxLoadError) and not n.startswith("_")
    }
    assert {name for _, name, _ in rows} == set(classes)
    parents: list[str] = []
    for depth, name, base in rows:
        parents[depth:] = [name]
        cls = classes[name]
        if depth:
            assert issubclass(cls, classes[parents[depth - 1]]), name
        if base is not None:
            module, _, attr = base.rpartition(".")
            builtin = getattr(pickle if module == "pickle" else builtins, attr)
            assert issubclass(cls, builtin), (name, base)
