"""``sandboxload convert``: pickle -> safetensors through the sandbox, verified, atomic.

Converted folders must load to the same model (max abs diff 0) through the calls a user
makes -- ``SentenceTransformer(out)``, ``from_pretrained(out)``, an infinity server -- on both
stacks; a payload given to convert never runs; nothing half-written is ever left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import safetensors
import torch

from sandboxload.cli import convert as convert_cli

from . import attacks
from .helpers import (
    PY,
    SENTENCES,
    Payload,
    Server,
    add_dense,
    clean_env,
    encode_unprotected,
    free_port,
    json_without_sandboxload,
    on_a_terminal,
    pickle_copy,
    server_env,
    sharded_copy,
    state_dict,
)


def convert(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in a fresh interpreter."""
    return subprocess.run(
        [PY, "-m", "sandboxload", "convert", *map(str, args)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def partials(root: Path) -> list[Path]:
    """Temporary files or folders of an unfinished conversion anywhere below ``root``."""
    return [p for p in root.rglob("*") if p.name.endswith(".partial")]


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_minilm_pickle_copy_with_a_dense_module_encodes_identically(tmp_path: Path) -> None:
    model = pickle_copy(tmp_path / "minilm")
    add_dense(model, "torch.nn.modules.activation.Tanh")
    proc = convert(model)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "minilm-safetensors"
    # No pickle is left in the result; everything else came over unchanged.
    assert files(out) == (files(model) - {"pytorch_model.bin", "2_Dense/pytorch_model.bin"}) | {
        "model.safetensors",
        "2_Dense/model.safetensors",
    }
    for name in files(model) - {"pytorch_model.bin", "2_Dense/pytorch_model.bin"}:
        assert (out / name).read_bytes() == (model / name).read_bytes(), name
    with safetensors.safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    got = encode_unprotected([model, out])
    assert got[str(out)] == got[str(model)]  # exactly: max abs diff 0
    assert "converted 2 checkpoints" in proc.stdout


def test_sharded_pickle_copy_gets_a_safetensors_index(tmp_path: Path) -> None:
    model = sharded_copy(tmp_path / "sharded", "bin")
    out = tmp_path / "converted"
    proc = convert(model, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "pytorch_model.bin.index.json").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    old = json.loads((model / "pytorch_model.bin.index.json").read_text())
    assert index["metadata"]["total_size"] == old["metadata"]["total_size"]
    assert set(index["weight_map"]) == set(old["weight_map"])
    for name, shard in index["weight_map"].items():
        assert shard == old["weight_map"][name].replace("pytorch_model", "model").replace(
            ".bin", ".safetensors"
        )
        with safetensors.safe_open(str(out / shard), "pt") as f:
            names = f.keys()
            assert name in names
    got = encode_unprotected([model, out])
    assert got[str(out)] == got[str(model)]


TIED = """
import json, sys, torch
import transformers
ids = torch.tensor([[1, 5, 9, 2, 7]])
out = {}
for cls, path in json.loads(sys.argv[1]):
    model = getattr(transformers, cls).from_pretrained(path).eval()
    inp, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    out[path] = {
        "logits": model(ids).logits.flatten().tolist(),
        "embedding": inp.flatten().tolist(),
        "tied": inp.data_ptr() == head.data_ptr(),
    }
print(json.dumps(out))
"""


def _tiny(kind: str) -> tuple[str, torch.nn.Module]:
    import transformers

    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16
        )
        return "AutoModelForCausalLM", transformers.GPT2LMHeadModel(config)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=16,
    )
    return "AutoModelForMaskedLM", transformers.BertForMaskedLM(config)


@pytest.mark.parametrize(("kind", "head_first"), [("gpt2", False), ("bert", True)])
def test_tied_weights_load_to_the_same_model(tmp_path: Path, kind: str, head_first: bool) -> None:
    """Tied weights (the head is the input embedding) are written under both names, so the
    loaders tie them back to the same model -- whatever order the file lists them in (with
    the head first, keeping the first name only made transformers load a random embedding:
    found by an attack review)."""
    auto, model = _tiny(kind)
    folder = tmp_path / kind
    model.config.save_pretrained(folder)
    sd = model.state_dict()
    head = next(k for k in sd if k.endswith(("lm_head.weight", "decoder.weight")))
    if head_first:
        sd = {head: sd[head], **{k: v for k, v in sd.items() if k != head}}
    assert sd[head].data_ptr() == model.get_input_embeddings().weight.data_ptr()
    torch.save(sd, folder / "pytorch_model.bin")
    out = tmp_path / f"{kind}-st"
    proc = convert(folder, "--out", out)
    assert proc.returncode == 0, proc.stderr
    with safetensors.safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert names == set(sd) and f.metadata() == {"format": "pt"}
    got = json_without_sandboxload(TIED, [[auto, str(folder)], [auto, str(out)]])
    assert got[str(out)]["tied"] and got[str(folder)]["tied"]
    assert got[str(out)]["embedding"] == got[str(folder)]["embedding"]
    assert got[str(out)]["logits"] == got[str(folder)]["logits"]


def test_views_of_one_storage_keep_their_own_values(tmp_path: Path) -> None:
    """Slices of one buffer are not tied weights: each is written with its own bytes."""
    base = torch.arange(24, dtype=torch.float32)
    ckpt = tmp_path / "views.pt"
    torch.save({"a": base[:12].view(3, 4), "b": base[12:], "t": base.view(4, 6).t()}, ckpt)
    assert convert_cli.main([str(ckpt)]) == 0
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "views.safetensors"))
    assert torch.equal(got["a"], base[:12].view(3, 4))
    assert torch.equal(got["b"], base[12:])
    assert torch.equal(got["t"], base.view(4, 6).t())


def test_bits_are_kept_exactly(tmp_path: Path) -> None:
    """NaN payloads, -0.0, bf16, bool, int: compared by bytes, not by value."""
    from safetensors.torch import load_file

    nan = torch.tensor([0x7FC00001, 0xFFC12345 - 2**32, -(2**31)], dtype=torch.int32).view(
        torch.float32
    )
    sd = {
        "nan": nan,
        "bf16": torch.randn(5).to(torch.bfloat16),
        "bool": torch.tensor([True, False]),
        "i64": torch.tensor([-(2**62), 3]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
    }
    torch.save(sd, tmp_path / "bits.pt")
    assert convert_cli.main([str(tmp_path / "bits.pt")]) == 0
    got = load_file(str(tmp_path / "bits.safetensors"))
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert (
            got[k].reshape(-1).view(torch.uint8).tolist()
            == v.reshape(-1).view(torch.uint8).tolist()
        ), k


@pytest.mark.parametrize("technique", sorted(attacks.TECHNIQUES))
def test_payloads_are_refused_and_never_run(tmp_path: Path, technique: str) -> None:
    """Each technique (proven live in test_sandbox_attacks), in every form, is refused; no
    canary, no output file."""
    for form, wrap in attacks.FORMS.items():
        canary = tmp_path / f"canary-{form}"
        path = tmp_path / f"evil-{form}.pt"
        path.write_bytes(wrap(attacks.payload(technique, canary)))
        assert convert_cli.main([str(path)]) == 1, form
        assert not canary.exists(), f"{technique} [{form}] ran"
    assert not list(tmp_path.glob("*.safetensors")) and not partials(tmp_path)


def test_payload_through_the_cli_is_refused_typed(tmp_path: Path, canary: Path) -> None:
    model = pickle_copy(tmp_path / "evil", {**state_dict(), "x": Payload(canary)})
    proc = convert(model)
    assert proc.returncode == 1
    assert "UnsafeGlobal" in proc.stderr or "posix.system" in proc.stderr, proc.stderr
    assert str(model / "pytorch_model.bin") in proc.stderr
    assert not (tmp_path / "evil-safetensors").exists() and not partials(tmp_path)


def test_a_failure_midway_leaves_no_output(tmp_path: Path, canary: Path) -> None:
    """The last shard is a payload: the shards before it were written and verified, but no
    output folder (nor any temporary file) is left."""
    model = sharded_copy(tmp_path / "sharded", "bin")
    shard = model / "pytorch_model-00003-of-00003.bin"
    torch.save({**torch.load(shard), "x": Payload(canary)}, shard)
    proc = convert(model)
    assert proc.returncode == 1, proc.stderr
    assert str(shard) in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sharded"]
    assert not partials(tmp_path)


def _found(root: Path, name: str) -> bool:
    """Whether a file ``name`` exists below ``root`` (os.walk: directories that vanish while
    it walks are skipped, as the conversion's temporary ones do)."""
    return any(name in files for _, _, files in os.walk(root))


@pytest.mark.parametrize(
    ("signum", "status", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_a_signal_midway_leaves_no_partial_file(
    tmp_path: Path, signum: int, status: int, said: str
) -> None:
    """Ctrl-C, or SIGTERM (a CI timeout), once the first of three large checkpoints is being
    written: nothing is left, neither the output folder nor a temporary file."""
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(3):
        torch.save({"w": torch.randn(40_000_000)}, folder / f"part{i}.pt")  # 160 MB each
    proc = subprocess.Popen(
        [PY, "-m", "sandboxload", "convert", str(folder)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not _found(tmp_path, "part0.safetensors"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first checkpoint was never written"
            time.sleep(0.01)  # polling a condition, not waiting for one
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    assert said in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]
    assert not partials(tmp_path)


def test_what_safetensors_cannot_hold_is_named_or_dropped_on_request(tmp_path: Path) -> None:
    ckpt = tmp_path / "train.pt"
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    torch.save({"w": torch.ones(3), "epoch": 3, "optimizer": opt.state_dict()}, ckpt)
    proc = convert(ckpt)
    assert proc.returncode == 1
    assert "'epoch' (an int)" in proc.stderr
    assert "'optimizer' (a dict of 2 entries)" in proc.stderr
    assert "--drop-non-tensors" in proc.stderr and str(ckpt) in proc.stderr
    assert not (tmp_path / "train.safetensors").exists()

    proc = convert(ckpt, "--drop-non-tensors")
    assert proc.returncode == 0, proc.stderr
    assert "left out: 'epoch'" in proc.stdout and "'optimizer'" in proc.stdout
    from safetensors.torch import load_file

    assert list(load_file(str(tmp_path / "train.safetensors"))) == ["w"]


def test_a_nested_state_dict_is_converted_with_key(tmp_path: Path) -> None:
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.eye(3)}, "global_step": 10}, ckpt)
    proc = convert(ckpt)
    assert proc.returncode == 1 and "--key state_dict" in proc.stderr, proc.stderr
    proc = convert(ckpt, "--key", "state_dict", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file

    assert torch.equal(
        load_file(str(tmp_path / "out" / "lightning.safetensors"))["layer.weight"], torch.eye(3)
    )


def test_in_place_removes_the_pickle_only_with_delete_pickle(tmp_path: Path) -> None:
    model = pickle_copy(tmp_path / "m")
    assert convert(model, "--delete-pickle").returncode == 2  # only with --in-place
    proc = convert(model, "--in-place")
    assert proc.returncode == 0, proc.stderr
    assert (model / "pytorch_model.bin").exists() and (model / "model.safetensors").exists()
    again = convert(model, "--in-place")  # beside safetensors the loaders prefer: refused
    assert again.returncode == 1 and "which the loaders prefer" in again.stderr
    (model / "model.safetensors").unlink()
    proc = convert(model, "--in-place", "--delete-pickle")
    assert proc.returncode == 0, proc.stderr
    assert not (model / "pytorch_model.bin").exists()
    assert not partials(model)
    reference = pickle_copy(tmp_path / "reference")
    got = encode_unprotected([reference, model])
    assert got[str(model)] == got[str(reference)]


def test_a_file_converts_beside_itself_and_never_overwrites(tmp_path: Path) -> None:
    ckpt = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(2)}, ckpt)
    assert convert(ckpt).returncode == 0
    assert (tmp_path / "model.safetensors").exists()
    proc = convert(ckpt)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert convert(tmp_path / "missing.bin").returncode == 2


def test_a_fifo_named_like_a_checkpoint_is_refused_without_blocking(tmp_path: Path) -> None:
    model = pickle_copy(tmp_path / "m")
    os.mkfifo(model / "extra.bin")
    proc = convert(model, timeout=120)
    assert proc.returncode == 1 and "extra.bin" in proc.stderr and "FIFO" in proc.stderr
    assert not (tmp_path / "m-safetensors").exists() and not partials(tmp_path)


def test_an_index_naming_a_file_outside_its_folder_is_refused(tmp_path: Path) -> None:
    model = sharded_copy(tmp_path / "sharded", "bin")
    index = model / "pytorch_model.bin.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["x"] = "../elsewhere.bin"
    index.write_text(json.dumps(data))
    proc = convert(model)
    assert proc.returncode == 1 and "outside its folder" in proc.stderr, proc.stderr
    assert not (tmp_path / "sharded-safetensors").exists()


def test_a_pinned_folder_must_match_its_manifest(tmp_path: Path) -> None:
    model = pickle_copy(tmp_path / "m")
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"{'0' * 64}  {model / 'pytorch_model.bin'}\n")
    proc = subprocess.run(
        [PY, "-m", "sandboxload", "--manifest", str(manifest), "convert", str(model)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr
    assert "pytorch_model.bin" in proc.stderr and "0" * 64 in proc.stderr
    assert not (tmp_path / "m-safetensors").exists()


LOCAL = ("--host", "127.0.0.1", "--port")


def infinity_embeddings(model: Path, tmp: Path) -> list[list[float]]:
    port = free_port()
    infinity = str(Path(PY).parent / "infinity_emb")
    server = Server(
        [PY, "-m", "sandboxload", infinity, "v2", "--model-id", str(model), *LOCAL, str(port)],
        port=port,
        model=str(model),
        log=tmp / f"infinity-{port}.log",
        env=server_env(),
    )
    try:
        assert server.wait_ready(), server.output()[-3000:]
        return server.embed(SENTENCES)
    finally:
        server.stop()


@pytest.mark.slow
def test_infinity_serves_the_converted_folder_with_the_same_vectors(tmp_path: Path) -> None:
    pytest.importorskip("infinity_emb")
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        pytest.skip("infinity_emb 0.0.78 cannot serve on transformers 5 (test_infinity)")
    model = pickle_copy(tmp_path / "minilm")
    assert convert(model).returncode == 0
    converted = tmp_path / "minilm-safetensors"
    assert infinity_embeddings(converted, tmp_path) == infinity_embeddings(model, tmp_path)


def test_links_out_of_the_folder_are_refused(tmp_path: Path) -> None:
    """A folder's file linked to a secret (or to another private model) would be copied or
    converted into the output, to be published with it."""
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    private = tmp_path / "private.bin"
    torch.save({"w": torch.ones(2)}, private)
    for name, target in (("tokenizer.json", secret), ("extra.bin", private)):
        model = pickle_copy(tmp_path / f"m-{name}")
        (model / name).unlink(missing_ok=True)
        (model / name).symlink_to(target)
        proc = convert(model)
        assert proc.returncode == 1 and "outside the model folder" in proc.stderr, proc.stderr
        assert not (tmp_path / f"m-{name}-safetensors").exists() and not partials(tmp_path)
        assert convert(model, "--exclude", name).returncode == 0


def test_a_hugging_face_cache_snapshot_converts(tmp_path: Path) -> None:
    """A snapshot's files are links into the repo's blobs/: inside the model, and followed."""
    source = pickle_copy(tmp_path / "source")
    repo = tmp_path / "hub" / "models--org--minilm"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for path in source.rglob("*"):
        rel = path.relative_to(source)
        if path.is_dir():
            (snapshot / rel).mkdir()
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / rel).symlink_to(os.path.relpath(blob, (snapshot / rel).parent))
    out = tmp_path / "converted"
    proc = convert(snapshot, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert not any(p.is_symlink() for p in out.rglob("*"))
    got = encode_unprotected([source, out])
    assert got[str(out)] == got[str(source)]


def test_a_bar_on_a_terminal_and_nothing_in_a_pipe(tmp_path: Path) -> None:
    model = sharded_copy(tmp_path / "sharded", "bin")
    status, out, terminal = on_a_terminal("convert", str(model), timeout=600)
    assert status == 0, terminal.decode(errors="replace")
    # The total is drawn from the first frame; later frames are rate-limited by tqdm.
    assert b"converting" in terminal and b"\r" in terminal and b"0/3 [" in terminal, terminal
    assert "converted 3 checkpoints" in out
    shutil.rmtree(tmp_path / "sharded-safetensors")
    piped = convert(model)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


# --- regressions of the attack review ----------------------------------------------------


def test_a_pickle_beside_a_safetensors_index_is_refused(tmp_path: Path) -> None:
    """The folder loads its safetensors shards (B); a converted pickle (A) as model.safetensors
    would win over that index, publishing other weights than the folder loads."""
    model = sharded_copy(tmp_path / "m", "safetensors")
    torch.save({"w": torch.ones(2)}, model / "pytorch_model.bin")
    proc = convert(model)
    assert proc.returncode == 1 and "which the loaders prefer" in proc.stderr, proc.stderr
    assert not (tmp_path / "m-safetensors").exists()


def test_expanded_and_many_views_are_bounded(tmp_path: Path) -> None:
    """A stride-0 view of one element, or many views of one buffer, would be written out in
    full: refused past a bound tied to the file's size, fast, with a typed error."""
    tiny = tmp_path / "expand.pt"
    torch.save({"w": torch.zeros(1).expand(100_000_000)}, tiny)
    assert tiny.stat().st_size < 4096
    proc = convert(tiny)
    assert proc.returncode == 1 and "bytes once written" in proc.stderr, proc.stderr
    assert not (tmp_path / "expand.safetensors").exists()
    # Many distinct small views of one storage within the bound: each written, exactly.
    base = torch.arange(20_000, dtype=torch.float32)
    views = {f"v{i}": base[i : i + 1] for i in range(20_000)}
    torch.save(views, tmp_path / "views.pt")
    assert convert_cli.main([str(tmp_path / "views.pt")]) == 0
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "views.safetensors"))
    assert all(got[f"v{i}"].item() == i for i in range(0, 20_000, 997))


def test_entries_holding_tensors_are_never_dropped_nor_their_pickle_deleted(
    tmp_path: Path,
) -> None:
    model = tmp_path / "m"
    model.mkdir()
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, model / "pytorch_model.bin")
    proc = convert(model, "--in-place", "--delete-pickle", "--drop-non-tensors")
    assert proc.returncode == 1 and "--key state_dict" in proc.stderr, proc.stderr
    assert (model / "pytorch_model.bin").exists() and not (model / "model.safetensors").exists()
    torch.save({"epoch": 3, "note": "no weights"}, model / "pytorch_model.bin")
    proc = convert(model, "--in-place", "--delete-pickle", "--drop-non-tensors")
    assert proc.returncode == 1 and "holds no tensor" in proc.stderr, proc.stderr
    assert (model / "pytorch_model.bin").exists()


@pytest.mark.parametrize("layout", ["not a cache repository", "blob not named by a digest"])
def test_only_a_real_cache_snapshot_may_link_out(tmp_path: Path, layout: str) -> None:
    repo = tmp_path / ("uploads" if layout == "not a cache repository" else "models--o--m")
    snapshot = repo / "snapshots" / "evil"
    snapshot.mkdir(parents=True)
    secret = repo / "blobs" / ("a" * 64 if layout == "not a cache repository" else "secret")
    secret.parent.mkdir()
    secret.write_text('{"api_key": "victim"}')
    (snapshot / "notes.json").symlink_to(os.path.relpath(secret, snapshot))
    torch.save({"w": torch.ones(2)}, snapshot / "pytorch_model.bin")
    proc = convert(snapshot, "--out", tmp_path / "pub")
    assert proc.returncode == 1 and "outside the model folder" in proc.stderr, proc.stderr
    assert not (tmp_path / "pub").exists()


def test_no_pickle_is_carried_over_whatever_its_name(tmp_path: Path) -> None:
    import numpy as np

    cases = {
        "ckpt.pth.tar": lambda p: torch.save({"w": torch.ones(1)}, p),
        "model.pickle": lambda p: p.write_bytes(pickle.dumps({"w": [1.0]}, protocol=4)),
        "emb.npy": lambda p: np.save(p, np.array([{"x": 1}], dtype=object)),
        "embs.npz": lambda p: np.savez(p, a=np.ones(2), b=np.array([None], dtype=object)),
    }
    for name, make in cases.items():
        model = pickle_copy(tmp_path / f"m-{name}")
        make(model / name)
        proc = convert(model)
        assert proc.returncode == 1 and name in proc.stderr, (name, proc.stderr)
        assert not (tmp_path / f"m-{name}-safetensors").exists()
    model = pickle_copy(tmp_path / "numeric")
    np.save(model / "emb.npy", np.arange(4.0))  # plain numbers: carried over
    assert convert(model).returncode == 0
    assert (tmp_path / "numeric-safetensors" / "emb.npy").read_bytes() == (
        model / "emb.npy"
    ).read_bytes()


def test_hostile_indexes_and_names_are_typed_errors(tmp_path: Path) -> None:
    model = sharded_copy(tmp_path / "deep", "bin")
    (model / "pytorch_model.bin.index.json").write_text("[" * 100_000 + "]" * 100_000)
    proc = convert(model)
    assert proc.returncode == 1 and "nested too deeply" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    model = pickle_copy(tmp_path / "dir")
    (model / "model.safetensors").mkdir()
    proc = convert(model)
    assert proc.returncode == 1 and "would write a file of this name" in proc.stderr
    assert not partials(tmp_path)


def test_output_modes_follow_the_umask(tmp_path: Path) -> None:
    model = pickle_copy(tmp_path / "m")
    assert convert(model).returncode == 0
    out = tmp_path / "m-safetensors"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_names_from_the_file_cannot_forge_output_lines(tmp_path: Path) -> None:
    ckpt = tmp_path / "x\nconverted evil -> ok\x1b[2J.pt"
    torch.save({"w": torch.ones(1)}, ckpt)
    proc = convert(ckpt)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and "\x1b" not in proc.stdout
    assert "\\n" in proc.stdout


def test_a_failed_file_conversion_leaves_no_out_folder(tmp_path: Path, canary: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": Payload(canary)}, evil)
    assert convert(evil, "--out", tmp_path / "out").returncode == 1
    assert not (tmp_path / "out").exists()


def test_an_excluded_linked_directory_is_left_out(tmp_path: Path) -> None:
    model = pickle_copy(tmp_path / "m")
    (model / "linked").symlink_to(tmp_path)
    assert convert(model).returncode == 1
    proc = convert(model, "--exclude", "linked")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "m-safetensors" / "linked").exists()


def test_a_pickle_that_is_not_weights_is_named_with_the_way_out(tmp_path: Path) -> None:
    """training_args.bin (a pickled TrainingArguments) sits in many fine-tuned folders."""
    model = pickle_copy(tmp_path / "m")
    # GLOBAL transformers.training_args.TrainingArguments, (), NEWOBJ: what such a file names.
    args = b"\x80\x02" + attacks.G("transformers.training_args", "TrainingArguments") + b")\x81."
    (model / "training_args.bin").write_bytes(args)
    proc = convert(model)
    assert proc.returncode == 1, proc.stderr
    assert "TrainingArguments" in proc.stderr and "--exclude training_args.bin" in proc.stderr
    proc = convert(model, "--exclude", "training_args.bin")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "m-safetensors" / "training_args.bin").exists()
