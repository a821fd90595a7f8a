"""NumPy's pickles (issue 13, item 2): ``numpy.load(..., allow_pickle=True)`` on a model
folder's ``.npy``/``.npz`` of Python objects, or on a plain pickle, is refused with a typed
error naming the file; ``allow_pickle=False`` and numeric arrays are untouched."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from sandboxload.errors import PickleRefusedError

from .helpers import Payload, run_py


def payloads(folder: Path, canary: Path) -> dict[str, Path]:
    out = {"npy": folder / "obj.npy", "npz": folder / "objs.npz", "pickle": folder / "raw.pkl"}
    np.save(out["npy"], np.array([Payload(canary)], dtype=object), allow_pickle=True)
    np.savez(out["npz"], a=np.ones(2), b=np.array([Payload(canary)], dtype=object))
    out["pickle"].write_bytes(pickle.dumps(Payload(canary)))
    return out


@pytest.mark.parametrize("kind", ["npy", "npz", "pickle"])
def test_the_payloads_are_live_without_sandboxload(tmp_path: Path, kind: str) -> None:
    canary = tmp_path / "ran"
    path = payloads(tmp_path, canary)[kind]
    load = f"z = numpy.load({str(path)!r}, allow_pickle=True)"
    read = "; [z[k] for k in z.files]" if kind == "npz" else ""  # npz members load lazily
    proc = run_py(f"import numpy; {load}{read}")
    assert proc.returncode == 0, proc.stderr
    assert canary.exists()  # the attack works: sandboxload is what stops it below
    canary.unlink()


@pytest.mark.usefixtures("sandboxed")
@pytest.mark.parametrize("kind", ["npy", "npz", "pickle"])
def test_allow_pickle_true_is_refused_typed(tmp_path: Path, canary: Path, kind: str) -> None:
    path = payloads(tmp_path, canary)[kind]
    with pytest.raises(PickleRefusedError, match=str(path)):
        np.load(path, allow_pickle=True)
    with pytest.raises(PickleRefusedError), open(path, "rb") as f:  # a file object too
        np.load(f, allow_pickle=True)
    if kind == "npy":
        with pytest.raises(PickleRefusedError), open(path, "rb") as f:
            np.lib.format.read_array(f, allow_pickle=True)
    assert not canary.exists()


@pytest.mark.usefixtures("sandboxed")
def test_numbers_and_allow_pickle_false_are_untouched(tmp_path: Path, canary: Path) -> None:
    np.save(tmp_path / "num.npy", np.arange(5.0))
    np.savez(tmp_path / "nums.npz", a=np.arange(3), b=np.eye(2))
    for allow in (False, True):
        assert np.array_equal(np.load(tmp_path / "num.npy", allow_pickle=allow), np.arange(5.0))
        with np.load(tmp_path / "nums.npz", allow_pickle=allow) as z:
            assert z.files == ["a", "b"] and np.array_equal(z["b"], np.eye(2))
    path = payloads(tmp_path, canary)["npy"]
    with pytest.raises(ValueError, match="allow_pickle=False"):  # NumPy's own refusal
        np.load(path)
    assert not canary.exists()


def test_pickle_allow_is_the_operators_opt_out(tmp_path: Path) -> None:
    np.save(tmp_path / "strs.npy", np.array(["a", {"b": 1}], dtype=object), allow_pickle=True)
    code = (
        "import numpy, sandboxload; sandboxload.activate(); "
        f"print(numpy.load({str(tmp_path / 'strs.npy')!r}, allow_pickle=True)[1])"
    )
    proc = run_py(code, env={**os.environ, "SANDBOXLOAD_PICKLE": "allow"})
    assert proc.returncode == 0 and proc.stdout.strip() == "{'b': 1}", proc.stderr
    proc = run_py(code, env={k: v for k, v in os.environ.items() if k != "SANDBOXLOAD_PICKLE"})
    assert proc.returncode != 0 and "PickleRefusedError" in proc.stderr
