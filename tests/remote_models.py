"""Model folders that ship code: every dynamic-code entry point of transformers and
sentence-transformers, each reached through the call a user makes.

Every module file a folder ships starts with ``import this`` (``check_imports`` imports every
module a file names, before any of its code runs) and then creates a canary named after its
case in ``$EVIL_CANARY_DIR``. Folders are tiny random models made with transformers' config
classes and ``save_pretrained``, with MiniLM's tokenizer files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .helpers import minilm

EVIL = """import this  # check_imports imports every module a file names, before its code runs
import os
import pathlib

pathlib.Path(os.environ["EVIL_CANARY_DIR"], {case!r}).touch()
"""
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def _tokenizer(folder: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copy(minilm() / name, folder / name)


def _save(model: object, folder: Path) -> Path:
    model.save_pretrained(folder)  # type: ignore[attr-defined]
    _tokenizer(folder)
    return folder


def bert(folder: Path, *, classifier: bool = False) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        num_labels=1,
    )
    return _save(BertForSequenceClassification(config) if classifier else BertModel(config), folder)


def causal(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return _save(LlamaForCausalLM(config), folder)


def _code(folder: Path, name: str, case: str, body: str) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(EVIL.format(case=case) + body)


def _json(path: Path, **updates: object) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(updates)
    path.write_text(json.dumps(data))


@dataclass(frozen=True)
class Case:
    build: Callable[[Path, str], Path]  # (folder, case name) -> the model path to load
    call: str  # Python source; `path` is the model path
    live_on: str = "both"  # where upstream runs the code: "both", "4" or "5" (major versions)


def _auto_model(folder: Path, case: str) -> Path:
    bert(folder)
    body = "from .helper_evil import VALUE\nfrom transformers import BertModel\n\n\n"
    _code(folder, "modeling_evil.py", case, body + "class EvilModel(BertModel):\n    pass\n")
    _code(folder, "helper_evil.py", case + "-helper", "VALUE = 1\n")
    _json(folder / "config.json", auto_map={"AutoModel": "modeling_evil.EvilModel"})
    return folder


def _auto_config(folder: Path, case: str) -> Path:
    bert(folder)
    _code(folder, "configuration_evil.py", case, "from transformers import BertConfig\n\n\n"
          "class EvilConfig(BertConfig):\n    model_type = 'bert'\n")  # fmt: skip
    _json(folder / "config.json", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    return folder


def _auto_tokenizer(folder: Path, case: str) -> Path:
    bert(folder)
    _code(folder, "tokenization_evil.py", case, "from transformers import BertTokenizer\n\n\n"
          "class EvilTokenizer(BertTokenizer):\n    pass\n")  # fmt: skip
    _json(
        folder / "tokenizer_config.json",
        auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]},
        tokenizer_class="EvilTokenizer",
    )
    return folder


def _preprocessor(kind: str, base: str) -> Callable[[Path, str], Path]:
    def build(folder: Path, case: str) -> Path:
        bert(folder)
        _code(folder, "processing_evil.py", case, f"from transformers import {base}\n\n\n"
              f"class Evil({base}):\n    pass\n")  # fmt: skip
        key = "feature_extractor_type" if kind == "AutoFeatureExtractor" else "image_processor_type"
        _json(folder / "preprocessor_config.json", **{key: "Evil"},
              auto_map={kind: "processing_evil.Evil"})  # fmt: skip
        return folder

    return build


def _custom_generate(folder: Path, case: str) -> Path:
    causal(folder)
    _code(
        folder,
        "custom_generate/generate.py",
        case,
        "def generate(model, *a, **k):\n    return None\n",
    )
    return folder


def _custom_pipeline(folder: Path, case: str) -> Path:
    bert(folder)
    _code(folder, "pipeline_evil.py", case, "from transformers import Pipeline\n\n\n"
          "class EvilPipeline(Pipeline):\n    pass\n")  # fmt: skip
    impl = {"impl": "pipeline_evil.EvilPipeline", "pt": ["AutoModel"], "tf": [], "type": "text"}
    _json(folder / "config.json", custom_pipelines={"evil-task": impl})
    return folder


def _st_module(folder: Path, case: str) -> Path:
    folder.mkdir(parents=True)
    _code(folder, "st_evil.py", case, "import torch\n\n\nclass EvilModule(torch.nn.Module):\n"
          "    @classmethod\n    def load(cls, *a, **k):\n        return cls()\n")  # fmt: skip
    (folder / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "0", "path": "", "type": "st_evil.EvilModule"}])
    )
    return folder


def _cross_encoder(folder: Path, case: str) -> Path:
    bert(folder, classifier=True)
    base = "BertForSequenceClassification"
    body = f"from transformers import {base}\n\n\nclass EvilCls({base}):\n    pass\n"
    _code(folder, "modeling_evil.py", case, body)
    auto_map = {"AutoModelForSequenceClassification": "modeling_evil.EvilCls"}
    _json(folder / "config.json", auto_map=auto_map)
    return folder


TRUST = "trust_remote_code=True"
CASES: dict[str, Case] = {
    "auto_map-model": Case(_auto_model, f"AutoModel.from_pretrained(path, {TRUST})"),
    "auto_map-config": Case(_auto_config, f"AutoConfig.from_pretrained(path, {TRUST})"),
    "auto_map-tokenizer": Case(_auto_tokenizer, f"AutoTokenizer.from_pretrained(path, {TRUST})"),
    # AutoProcessor tries a tokenizer, then an image processor, then a feature extractor, each
    # in `except Exception`: a refusal in the first must still reach the caller.
    "auto_map-processor": Case(_auto_tokenizer, f"AutoProcessor.from_pretrained(path, {TRUST})"),
    "auto_map-feature-extractor": Case(
        _preprocessor("AutoFeatureExtractor", "SequenceFeatureExtractor"),
        f"AutoFeatureExtractor.from_pretrained(path, {TRUST})",
    ),
    "auto_map-image-processor": Case(
        _preprocessor("AutoImageProcessor", "BaseImageProcessor"),
        f"AutoImageProcessor.from_pretrained(path, {TRUST})",
    ),
    # No auto_map at all: custom_generate/generate.py, which transformers 4.57 even runs for a
    # local folder without trust_remote_code.
    "custom_generate": Case(
        _custom_generate, f"AutoModelForCausalLM.from_pretrained(path, {TRUST})"
    ),
    "custom_generate-untrusted": Case(
        _custom_generate, "AutoModelForCausalLM.from_pretrained(path)", live_on="4"
    ),
    "custom_pipeline": Case(_custom_pipeline, f"pipeline('evil-task', model=path, {TRUST})"),
    "st-module-class": Case(_st_module, f"SentenceTransformer(path, device='cpu', {TRUST})"),
    "cross-encoder-auto_map": Case(_cross_encoder, f"CrossEncoder(path, device='cpu', {TRUST})"),
    "cross-encoder-causal": Case(
        _custom_generate, f"CrossEncoder(path, device='cpu', {TRUST})", live_on="5"
    ),
}

RUNNER = """
import json, os, sys
from transformers import (AutoConfig, AutoFeatureExtractor, AutoImageProcessor, AutoModel,
    AutoModelForCausalLM, AutoProcessor, AutoTokenizer, pipeline)
from sentence_transformers import CrossEncoder, SentenceTransformer

results = {}
for name, (path, call) in json.loads(sys.argv[1]).items():
    try:
        exec(call, globals(), {"path": path})
        outcome = "loaded"
    except BaseException as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:1000]}"
    results[name] = {
        "outcome": outcome,
        "ran": os.path.exists(os.path.join(os.environ["EVIL_CANARY_DIR"], name)),
        "this_imported": "this" in sys.modules,
    }
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""
