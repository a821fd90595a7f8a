"""infinity_emb's other model kinds (issue 13, item 5): reranking, classification and CLIP,
on pickle weights and on payloads.

infinity picks the kind from ``config.json``: a ``*SequenceClassification`` architecture with
one label is a reranker (``POST /rerank``, through ``sentence_transformers.CrossEncoder``),
with several a classifier (``POST /classify``, through ``transformers.pipeline(
"text-classification")``), a ``vision_config`` an image/text embedder (``AutoModel`` +
``AutoProcessor``, ``get_text_features`` / ``get_image_features``). Each folder here is a tiny
random model made with transformers' config classes and ``save_pretrained`` (the original,
safetensors); its pickle copy holds the same weights as ``pytorch_model.bin`` written by
``torch.save``; its payload copy adds an entry whose unpickling creates a canary.

On transformers 4.57 a real ``infinity_emb v2`` server runs through the wrapper; infinity 0.0.78
cannot start on transformers 5 (tests/test_infinity.py), so on both stacks the library calls it
makes for each kind run in a fresh interpreter with sandboxload switched on (``SANDBOXLOAD=1``).

Not here: images sent to the server. infinity 0.0.78 resolves every image input (a URL or a
``data:`` URI) through ``aiohttp``, which neither ``infinity-emb[server,torch]`` nor this machine
installs (its ``[vision]`` extra would, with torchvision, which has no CPU build here); the
server answers 500 "aiohttp is not available". The CLIP server still loads the whole model,
runs images through it in its warm-up and answers text embeddings; the library test embeds an
image on both stacks.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from .helpers import (
    PY,
    Payload,
    Server,
    audited,
    clean_env,
    free_port,
    minilm,
    run_py,
    server_env,
)

pytestmark = pytest.mark.slow  # model folders, fresh interpreters, real servers

KINDS = ("rerank", "classify", "clip")
QUERY = "which file keeps the weights inert?"
TEXTS = ["sandboxload keeps weights inert", "A second, longer sentence to score here.", "pears"]
LABELS = ("negative", "neutral", "positive")


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


# infinity_emb 0.0.78 calls tokenizer.batch_encode_plus, which transformers 5 removed: it
# serves only on transformers 4.57 (test_upstream_incompatibility_on_transformers_5).
SERVES = importlib.util.find_spec("infinity_emb") is not None and transformers_major() < 5
INFINITY = str(Path(sys.executable).parent / "infinity_emb")


# --- model folders ---------------------------------------------------------------------------


def _bert_classifier(folder: Path, labels: tuple[str, ...]) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        # Wide enough weights that every input scores differently (the default 0.02 gives
        # logits near 0 that differ only in their last digits).
        initializer_range=0.5,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm() / name, folder / name)
    return folder


def _clip(folder: Path) -> Path:
    """A CLIP model with a byte-level BPE vocabulary written here (every byte, alone and
    word-final; no merges) and PIL's image processor (no torchvision)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder.mkdir(parents=True)
    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)} | {
        c + "</w>": len(chars) + i for i, c in enumerate(chars)
    }
    bos, eos = len(vocab), len(vocab) + 1
    vocab |= {"<|startoftext|>": bos, "<|endoftext|>": eos}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    crop = {"height": 32, "width": 32}
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop)
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


BUILD: dict[str, Callable[[Path], Path]] = {
    "rerank": lambda folder: _bert_classifier(folder, ("LABEL_0",)),
    "classify": lambda folder: _bert_classifier(folder, LABELS),
    "clip": _clip,
}


def pickle_of(original: Path, dst: Path, extra: dict[str, Any] | None = None) -> Path:
    """``original`` with its weights re-saved by ``torch.save`` as ``pytorch_model.bin``
    (no safetensors left), plus ``extra`` entries."""
    shutil.copytree(original, dst)
    weights = dst / "model.safetensors"
    state = safetensors.torch.load_file(str(weights))
    weights.unlink()
    torch.save({**state, **(extra or {})}, dst / "pytorch_model.bin")
    return dst


def payload_of(original: Path, dst: Path, canary: Path) -> Path:
    return pickle_of(original, dst, {"x": Payload(canary)})


def prove_live(folder: Path, canary: Path) -> None:
    """The payload runs when the file is unpickled without sandboxload (a fresh interpreter,
    ``torch.load(weights_only=False)``, as a caller that passes it or an older torch does);
    the canary is removed again. Why not the unprotected server: transformers 4.57 loads
    ``pytorch_model.bin`` with ``weights_only=True``, so that server refuses this file on its
    own ("Weights only load failed"); sandboxload's guarantee does not rest on every caller
    passing it."""
    path = str(folder / "pytorch_model.bin")
    proc = run_py(f"import torch; torch.load({path!r}, weights_only=False)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert canary.exists(), "the payload did not run without sandboxload: it proves nothing"
    canary.unlink()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """{kind: {"original": folder, "pickle": folder}}."""
    root = tmp_path_factory.mktemp("kinds")
    out = {}
    for kind in KINDS:
        original = BUILD[kind](root / kind)
        out[kind] = {"original": original, "pickle": pickle_of(original, root / f"{kind}-pickle")}
    return out


def routes(log: Path) -> set[tuple[str, str, str]]:
    return {(e["file"], e["route"], e["decision"]) for e in audited(log)}


# --- the library calls infinity makes, on both stacks ---------------------------------------

# For each kind, what infinity 0.0.78's engine does with the folder (transformer/crossencoder,
# classifier and vision/torch_vision.py): the same constructors and loaders (without its
# optional dtype arguments), then the scores of TEXTS through each library's public call.
CALLS = """
import json, sys
import torch

QUERY, TEXTS = json.loads(sys.argv[1])


def rerank(path):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(path, device="cpu", trust_remote_code=True)
    return model.predict([(QUERY, t) for t in TEXTS]).tolist()


def classify(path):
    from transformers import pipeline

    pipe = pipeline(
        task="text-classification", model=path, trust_remote_code=True, device="cpu", top_k=None
    )
    return pipe(TEXTS, batch_size=256, truncation=True, padding=True)


def features(out):
    # transformers 5 returns the projected features as the pooler output of a ModelOutput.
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).tolist()


def clip(path):
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    image = Image.new("RGB", (40, 40))
    image.putdata([(x * 6, y * 6, (x + y) * 3) for y in range(40) for x in range(40)])
    inputs = processor(
        images=[image], text=TEXTS, return_tensors="pt", padding=True, truncation=True,
        max_length=77,
    )
    with torch.no_grad():
        text = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        )
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
    return {"text": features(text), "image": features(image)}


out = {}
for path, kind in json.loads(sys.argv[2]).items():
    try:
        out[path] = {"result": globals()[kind](path)}
    except Exception as exc:
        out[path] = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
"""


def library_calls(folders: dict[Path, str], env: dict[str, str]) -> dict[str, Any]:
    """{folder: {"result": ...} or {"error": type name, "message": ...}} of CALLS, each
    folder loaded as its kind, in one fresh interpreter with ``env``."""
    arg = {str(path): kind for path, kind in folders.items()}
    proc = subprocess.run(
        [PY, "-c", CALLS, json.dumps([QUERY, TEXTS]), json.dumps(arg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def offline(**extra: str) -> dict[str, str]:
    return clean_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)


def protected(audit: Path) -> dict[str, str]:
    return offline(SANDBOXLOAD="1", SANDBOXLOAD_AUDIT_LOG=str(audit))


@pytest.fixture(scope="module")
def unprotected_originals(folders: dict[str, dict[str, Path]]) -> dict[str, Any]:
    return library_calls({f["original"]: kind for kind, f in folders.items()}, offline())


@pytest.fixture(scope="module")
def protected_pickles(
    folders: dict[str, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    got = library_calls({f["pickle"]: kind for kind, f in folders.items()}, protected(audit))
    return got, audit


def distinct(scores: list[Any]) -> int:
    """How many of TEXTS got different scores (the model is not a constant)."""
    return len({json.dumps(s) for s in scores})


@pytest.mark.parametrize("kind", KINDS)
def test_library_calls_on_the_pickle_copy_equal_the_original(
    folders: dict[str, dict[str, Path]],
    unprotected_originals: dict[str, Any],
    protected_pickles: tuple[dict[str, Any], Path],
    kind: str,
) -> None:
    """The call infinity makes for this kind, with sandboxload on, on the pickle copy:
    the same numbers, to the last bit, as without sandboxload on the safetensors original;
    the pickle was parsed in the sandbox."""
    got, audit = protected_pickles
    want = unprotected_originals[str(folders[kind]["original"])]
    mine = got[str(folders[kind]["pickle"])]
    assert "result" in want, want
    assert mine == want  # floats compared exactly (JSON keeps every bit of a float)
    result = want["result"]
    assert distinct(result["text"] if kind == "clip" else result) == len(TEXTS)
    weights = str(folders[kind]["pickle"] / "pytorch_model.bin")
    assert {r for r in routes(audit) if r[0] == weights} == {(weights, "sandbox", "loaded")}
    assert {r[1:] for r in routes(audit)} == {("sandbox", "loaded")}  # no other route at all


@pytest.fixture(scope="module")
def payloads(
    folders: dict[str, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[Path, Path]]]:
    """{kind: (payload folder, its canary)}, each payload proven live first."""
    root = tmp_path_factory.mktemp("payloads")
    out = {}
    for kind in KINDS:
        canary = root / f"CANARY-{kind}"
        folder = payload_of(folders[kind]["original"], root / f"{kind}-payload", canary)
        prove_live(folder, canary)
        out[kind] = (folder, canary)
    yield out
    assert not any(canary.exists() for _, canary in out.values()), "a payload ran"


@pytest.fixture(scope="module")
def protected_payloads(
    payloads: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    got = library_calls({folder: kind for kind, (folder, _) in payloads.items()}, protected(audit))
    return got, audit


@pytest.mark.parametrize("kind", KINDS)
def test_library_calls_refuse_the_payload_typed(
    payloads: dict[str, tuple[Path, Path]],
    protected_payloads: tuple[dict[str, Any], Path],
    kind: str,
) -> None:
    """The same call on the payload copy raises sandboxload's own error to the caller (not a
    library's generic one), naming the file and the global; the payload never ran."""
    folder, canary = payloads[kind]
    got, audit = protected_payloads
    weights = str(folder / "pytorch_model.bin")
    outcome = got[str(folder)]
    assert outcome.get("error") == "UnsafeGlobalError", outcome
    assert weights in outcome["message"] and "posix.system" in outcome["message"]
    assert (weights, "sandbox", "refused") in routes(audit)
    assert not canary.exists()


# --- a real infinity_emb server, on transformers 4.57 ----------------------------------------


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(model: Path, *, wrapped: bool, audit: Path | None = None) -> Server:
        port = free_port()
        cmd = [INFINITY, "v2", "--model-id", str(model), "--host", "127.0.0.1"]
        cmd += ["--port", str(port)]
        if wrapped:
            cmd = [PY, "-m", "sandboxload", *cmd]
        extra = {"SANDBOXLOAD_AUDIT_LOG": str(audit)} if audit else {}
        server = Server(
            cmd,
            port=port,
            model=str(model),
            log=tmp_path / f"server-{port}.log",
            env=server_env(TRANSFORMERS_OFFLINE="1", **extra),
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def ask(server: Server, kind: str) -> dict[str, Any]:
    """The server's answer for this kind, without what differs between two servers (the
    request id, the time, the model's name)."""
    route, body = {
        "rerank": ("rerank", {"query": QUERY, "documents": TEXTS}),
        "classify": ("classify", {"input": TEXTS}),
        "clip": ("embeddings", {"input": TEXTS}),
    }[kind]
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/{route}",
        data=json.dumps({"model": server.model, **body}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    for key in ("id", "created", "model"):
        answer.pop(key)
    return answer


def capabilities(server: Server) -> set[str]:
    """What infinity made of the folder: the capabilities its engine declares."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/models", timeout=60) as resp:
        (model,) = json.loads(resp.read())["data"]
    return set(model["capabilities"])


CAPABILITIES = {"rerank": {"rerank"}, "classify": {"classify"}, "clip": {"embed", "image_embed"}}


@pytest.mark.skipif(not SERVES, reason="infinity_emb 0.0.78 serves only on transformers 4.57")
@pytest.mark.parametrize("kind", KINDS)
def test_wrapped_server_on_the_pickle_copy_answers_like_the_plain_one(
    folders: dict[str, dict[str, Path]],
    servers: Callable[..., Server],
    tmp_path: Path,
    kind: str,
) -> None:
    """``python -m sandboxload infinity_emb v2`` on the pickle copy answers exactly what the
    unprotected server answers on the safetensors original; the pickle went through the
    sandbox."""
    audit = tmp_path / "audit.jsonl"
    wrapped = servers(folders[kind]["pickle"], wrapped=True, audit=audit)
    plain = servers(folders[kind]["original"], wrapped=False)
    assert wrapped.wait_ready(), wrapped.output()[-3000:]
    assert plain.wait_ready(), plain.output()[-3000:]
    assert capabilities(wrapped) == capabilities(plain) == CAPABILITIES[kind]
    got, want = ask(wrapped, kind), ask(plain, kind)
    assert got == want  # floats compared exactly
    scores = {
        "rerank": lambda a: [r["relevance_score"] for r in a["results"]],
        "classify": lambda a: a["data"],
        "clip": lambda a: [d["embedding"] for d in a["data"]],
    }[kind](want)
    assert distinct(scores) == len(TEXTS)
    weights = str(folders[kind]["pickle"] / "pytorch_model.bin")
    assert routes(audit) == {(weights, "sandbox", "loaded")}


@pytest.mark.skipif(not SERVES, reason="infinity_emb 0.0.78 serves only on transformers 4.57")
@pytest.mark.parametrize("kind", KINDS)
def test_wrapped_server_on_the_payload_copy_fails_to_start(
    folders: dict[str, dict[str, Path]],
    servers: Callable[..., Server],
    tmp_path: Path,
    canary: Path,
    kind: str,
) -> None:
    """The payload copy (proven live first) stops the wrapped server before it serves: the
    typed error in its output, the refusal in the audit log, no canary."""
    folder = payload_of(folders[kind]["original"], tmp_path / f"{kind}-payload", canary)
    prove_live(folder, canary)
    audit = tmp_path / "audit.jsonl"
    server = servers(folder, wrapped=True, audit=audit)
    assert not server.wait_ready()
    assert server.proc.returncode != 0
    output = server.output()
    assert "UnsafeGlobalError" in output and "posix.system" in output, output[-3000:]
    weights = str(folder / "pytorch_model.bin")
    assert routes(audit) == {(weights, "sandbox", "refused")}
    assert not canary.exists()
