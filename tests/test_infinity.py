"""A real infinity_emb v2 server, started through the wrapper, answering real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from . import remote_models
from .helpers import (
    PY,
    SENTENCES,
    Payload,
    Server,
    copy_model,
    free_port,
    pickle_copy,
    remote_code_model,
    server_env,
    state_dict,
)

pytest.importorskip("infinity_emb")
pytestmark = pytest.mark.slow  # real servers, each a model load and a warm-up
INFINITY = str(Path(sys.executable).parent / "infinity_emb")


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


# infinity_emb 0.0.78 calls tokenizer.batch_encode_plus during warm-up and batching, which
# transformers 5 removed: on that stack the server cannot start, with or without sandboxload
# (test_upstream_incompatibility_on_transformers_5 pins this down).
SERVES = transformers_major() < 5


def infinity(
    model: Path, *, wrapped: bool, tmp: Path, extra_env: dict[str, str] | None = None
) -> Server:
    """``infinity_emb v2`` on ``model``, through the wrapper or not."""
    port = free_port()
    cmd = [INFINITY, "v2", "--model-id", str(model), "--host", "127.0.0.1", "--port", str(port)]
    if wrapped:
        cmd = [PY, "-m", "sandboxload", *cmd]
    return Server(
        cmd,
        port=port,
        model=str(model),
        log=tmp / f"server-{port}.log",
        env=server_env(**(extra_env or {})),
    )


@pytest.fixture
def servers(tmp_path: Path) -> Any:
    started: list[Server] = []

    def start(model: Path, **kwargs: Any) -> Server:
        server = infinity(model, tmp=tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.skipif(not SERVES, reason="infinity_emb 0.0.78 cannot serve on transformers 5")
def test_wrapped_server_answers_like_the_plain_one(servers: Any, tmp_path: Path) -> None:
    model = pickle_copy(tmp_path / "minilm-pickle")
    audit = tmp_path / "audit.jsonl"
    wrapped = servers(model, wrapped=True, extra_env={"SANDBOXLOAD_AUDIT_LOG": str(audit)})
    plain = servers(model, wrapped=False)
    assert wrapped.wait_ready(), wrapped.output()[-3000:]
    assert plain.wait_ready(), plain.output()[-3000:]
    assert wrapped.embed(SENTENCES) == plain.embed(SENTENCES)
    log = [json.loads(x) for x in audit.read_text().splitlines()]
    assert {(e["file"], e["route"], e["decision"]) for e in log} == {
        (str(model / "pytorch_model.bin"), "sandbox", "loaded")
    }


def test_payload_model_fails_to_start(servers: Any, tmp_path: Path, canary: Path) -> None:
    model = pickle_copy(tmp_path / "minilm-payload", {**state_dict(), "x": Payload(canary)})
    server = servers(model, wrapped=True)
    assert not server.wait_ready()
    assert server.proc.returncode != 0
    assert "UnsafeGlobalError" in server.output() and "posix.system" in server.output()


def test_remote_code_model_fails_to_start(servers: Any, tmp_path: Path, canary: Path) -> None:
    """infinity passes trust_remote_code=True by default; sandboxload still refuses."""
    model = remote_code_model(tmp_path / "minilm-remote", canary)
    server = servers(model, wrapped=True, extra_env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert not server.wait_ready()
    assert "RemoteCodeRefusedError" in server.output(), server.output()[-3000:]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def test_reranker_with_auto_map_fails_to_start_and_writes_nothing(
    servers: Any, tmp_path: Path
) -> None:
    """A sequence-classification (reranker) folder whose config maps the class to its own
    code, served with infinity's default trust_remote_code=True: the typed refusal is in the
    output, the code never ran, and nothing was written outside the model folder (the modules
    cache included)."""
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    build = remote_models.CASES["cross-encoder-auto_map"].build
    # Live first: the plain server runs the folder's code (the canary appears).
    live = build(tmp_path / "reranker-live", "live")
    plain = servers(
        live,
        wrapped=False,
        extra_env={
            "HF_MODULES_CACHE": str(tmp_path / "live-modules"),
            "EVIL_CANARY_DIR": str(canaries),
        },
    )
    plain.wait_ready()
    plain.stop()
    assert (canaries / "live").exists(), plain.output()[-3000:]
    model = build(tmp_path / "reranker", "rr")
    before = files_under(tmp_path)
    server = servers(
        model,
        wrapped=True,
        extra_env={"HF_MODULES_CACHE": str(tmp_path / "modules"), "EVIL_CANARY_DIR": str(canaries)},
    )
    assert not server.wait_ready()
    assert "RemoteCodeRefusedError" in server.output(), server.output()[-3000:]
    assert not (canaries / "rr").exists()
    written = files_under(tmp_path) - before - {server.log.name}
    assert written == set(), written


@pytest.mark.skipif(SERVES, reason="only on transformers 5")
def test_upstream_incompatibility_on_transformers_5(servers: Any, tmp_path: Path) -> None:
    """Without sandboxload too, infinity 0.0.78 dies in warm-up on transformers 5; through the
    wrapper it gets as far (weights loaded through sandboxload) and dies the same way."""
    model = copy_model(tmp_path / "minilm")
    audit = tmp_path / "audit.jsonl"
    plain = servers(model, wrapped=False)
    wrapped = servers(model, wrapped=True, extra_env={"SANDBOXLOAD_AUDIT_LOG": str(audit)})
    for server in (plain, wrapped):
        assert not server.wait_ready()
        assert "batch_encode_plus" in server.output()
    assert any(json.loads(x)["decision"] == "loaded" for x in audit.read_text().splitlines())
