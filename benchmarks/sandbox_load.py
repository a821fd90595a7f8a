"""Sandboxed torch.load against in-process torch.load, measured in one run.

    python benchmarks/sandbox_load.py [--runs N] [--json FILE]

Builds a BERT-base-sized state dict (~440 MB, ~200 tensors) and a one-tensor checkpoint in a
temp dir, then times, with a warm page cache, medians of interleaved runs:

- ``torch.load(weights_only=True)`` (the original, in-process),
- ``torch.load(weights_only=True, mmap=True)`` (the original, in-process),
- the patched ``torch.load`` (sandbox: a fresh confined child per call, zero-copy rebuild).

Targets: BERT-base through the sandbox <= 0.25x the first and <= 3x the second; a one-tensor
checkpoint <= 60 ms median. Also reports the parent's peak-RSS growth for the sandboxed
load of the BERT-base file, measured in a fresh process, before any tensor is touched
(target: a few MB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import sandboxload
from sandboxload.patches.registry import TORCH_LOAD, original


def bert_base_state_dict() -> dict[str, torch.Tensor]:
    """BERT-base shapes: 110M parameters in 199 tensors."""
    g = torch.Generator().manual_seed(0)
    h, ff, layers = 768, 3072, 12

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    sd = {
        "embeddings.word_embeddings.weight": t(30522, h),
        "embeddings.position_embeddings.weight": t(512, h),
        "embeddings.token_type_embeddings.weight": t(2, h),
        "embeddings.LayerNorm.weight": t(h),
        "embeddings.LayerNorm.bias": t(h),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ):
            sd[p + name + ".weight"], sd[p + name + ".bias"] = t(h, h), t(h)
        sd[p + "attention.output.LayerNorm.weight"] = t(h)
        sd[p + "attention.output.LayerNorm.bias"] = t(h)
        sd[p + "intermediate.dense.weight"], sd[p + "intermediate.dense.bias"] = t(ff, h), t(ff)
        sd[p + "output.dense.weight"], sd[p + "output.dense.bias"] = t(h, ff), t(h)
        sd[p + "output.LayerNorm.weight"], sd[p + "output.LayerNorm.bias"] = t(h), t(h)
    sd["pooler.dense.weight"], sd["pooler.dense.bias"] = t(h, h), t(h)
    return sd


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


RSS_PROBE = """
import resource, sys, time, torch, sandboxload
sandboxload.activate()
time.sleep(0.5)  # the spare worker's start-up is not part of the load
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sd = torch.load(sys.argv[1], weights_only=True)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", metavar="FILE")
    opts = ap.parse_args()
    for k in [k for k in os.environ if k.startswith("SANDBOXLOAD_")]:
        del os.environ[k]
    sandboxload.activate(export_env=False)
    plain = original(TORCH_LOAD)
    with tempfile.TemporaryDirectory() as d:
        big, one = Path(d) / "bert.bin", Path(d) / "one.bin"
        sd = bert_base_state_dict()
        torch.save(sd, big)
        torch.save({"w": torch.randn(256, 256)}, one)
        del sd
        # Warm the page cache and every code path once.
        for fn in (
            lambda: plain(big, weights_only=True),
            lambda: torch.load(big),
            lambda: torch.load(one),
        ):
            fn()
        from sandboxload.sandbox import load, spare

        def parse_ms(path: Path, mmap: bool = False) -> float:
            """One load that really parses in a worker: the kept description is forgotten
            first, and the spare worker (started after the previous load) has finished
            starting, as it has between the loads of a real application."""
            load._kept.clear()
            spare.settle()
            time.sleep(0.05)
            return median_ms(lambda: torch.load(path, weights_only=True, mmap=mmap), 1)

        rows = {
            "torch.load(weights_only=True)": [],
            "torch.load(weights_only=True, mmap=True)": [],
            "sandboxload": [],
            "sandboxload mmap=True": [],
            "sandboxload one tensor": [],
            "sandboxload, same file again (kept description)": [],
            "sandboxload, SANDBOXLOAD_SPARE=off (cold worker)": [],
        }
        for _ in range(opts.runs):  # interleaved, so drift hits every column alike
            rows["torch.load(weights_only=True)"].append(
                median_ms(lambda: plain(big, weights_only=True), 1)
            )
            rows["torch.load(weights_only=True, mmap=True)"].append(
                median_ms(lambda: plain(big, weights_only=True, mmap=True), 1)
            )
            rows["sandboxload"].append(parse_ms(big))
            rows["sandboxload mmap=True"].append(parse_ms(big, mmap=True))
            rows["sandboxload, same file again (kept description)"].append(
                median_ms(lambda: torch.load(big, weights_only=True), 1)
            )
            rows["sandboxload one tensor"].append(parse_ms(one))
            os.environ["SANDBOXLOAD_SPARE"] = "off"
            rows["sandboxload, SANDBOXLOAD_SPARE=off (cold worker)"].append(parse_ms(big))
            del os.environ["SANDBOXLOAD_SPARE"]
        med = {k: statistics.median(v) for k, v in rows.items()}
        rss = float(
            subprocess.run(
                [sys.executable, "-c", RSS_PROBE, str(big)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        size_mb = big.stat().st_size / 2**20
    result = {
        "file_mb": round(size_mb, 1),
        "tensors": 199,
        "runs": opts.runs,
        "median_ms": {k: round(v, 1) for k, v in med.items()},
        "ratio_vs_torch_load": round(med["sandboxload"] / med["torch.load(weights_only=True)"], 3),
        "ratio_mmap_vs_torch_load_mmap": round(
            med["sandboxload mmap=True"] / med["torch.load(weights_only=True, mmap=True)"], 3
        ),
        "one_tensor_ms": round(med["sandboxload one tensor"], 1),
        "parent_peak_rss_growth_mb": round(rss, 1),
    }
    print(f"BERT-base-sized checkpoint: {result['file_mb']} MB, 199 tensors, {opts.runs} runs")
    for k, v in result["median_ms"].items():
        print(f"  {k:<50} {v:>8.1f} ms")
    # Like with like: tensors that own their memory against torch.load; mappings of the
    # file against torch's mmap=True.
    print(f"  sandbox / torch.load                      {result['ratio_vs_torch_load']:.3f}")
    mapped = result["ratio_mmap_vs_torch_load_mmap"]
    print(f"  sandbox mmap=True / torch.load(mmap=True) {mapped:.3f}")
    print(f"  one-tensor checkpoint           {result['one_tensor_ms']:.1f} ms (target <= 60)")
    print(
        f"  parent peak RSS growth          {result['parent_peak_rss_growth_mb']:.1f} MB "
        "(target: a few MB)"
    )
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
