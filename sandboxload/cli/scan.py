"""``sandboxload scan PATH...``: a gate for weight files and model folders (a mirror's CI).

Every weight file gets the loader's own decision under the current policy and its route's
check without loading (:mod:`sandboxload.scanning.check`); config files, code files and
``custom_generate/`` are reported as remote code; a Hugging Face cache is scanned once per blob
and each blob checked against its name (:mod:`sandboxload.scanning.units`).

Verdicts: ``ok``, ``refused`` (the policy or a check refuses it), ``unsafe`` (``pickle=allow``
would load it in-process, and it is not plain data), ``error`` (unreadable). Exit status: 0
all ok, 1 something refused or unsafe, 2 something unreadable, no weight file at all, or a
bad option. ``--jobs N`` runs N checks at a time (each pickle is parsed in its own sandbox
child); ``--shard K/N`` / ``--shards N`` (K from ``JOB_COMPLETION_INDEX``) scan one of N
disjoint parts that together are the whole scan. Output is sorted, whatever ``--jobs``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

from .. import policy
from ..scanning import report, sarif, units
from ..scanning.check import Row, check
from . import progress
from .inputs import no_weight_files

BAD_OPTION = 2
INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by a Kubernetes Indexed Job in each pod


class ShardError(ValueError):
    pass


def parse_shard(shard: str | None, shards: int | None) -> tuple[int, int]:
    """(K, N) from ``--shard K/N`` or ``--shards N`` and ``$JOB_COMPLETION_INDEX``."""
    if shard is not None and shards is not None:
        raise ShardError("give --shard K/N or --shards N, not both")
    if shard is None and shards is None:
        return 0, 1
    if shard is not None:
        k_text, sep, n_text = shard.partition("/")
        what = f"--shard {shard!r}"
        if not sep:
            raise ShardError(f"{what}: expected K/N, e.g. 0/4")
    else:
        k_text, n_text = os.environ.get(INDEX_ENV, ""), str(shards)
        what = f"--shards {shards} with {INDEX_ENV}={k_text!r}"
        if not k_text:
            raise ShardError(f"--shards {shards}: {INDEX_ENV} is not set (use --shard K/N)")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ShardError(f"{what}: K and N must be whole numbers") from None
    if n < 1 or not 0 <= k < n:
        raise ShardError(f"{what}: needs N >= 1 and 0 <= K < N")
    return k, n


def run(todo: list[units.Unit], jobs: int) -> list[Row]:
    """Check every unit, ``jobs`` at a time; rows in the units' order."""
    pol = policy.current()
    done: dict[int, list[Row]] = {}
    bar = progress.bar(len(todo), "sandboxload scan")
    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="scan") as pool:
            futures = {pool.submit(check, u, pol): i for i, u in enumerate(todo)}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                bar.update(1)
    finally:
        bar.close()
    return [row for i in range(len(todo)) for row in done[i]]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sandboxload scan", description=__doc__.splitlines()[0])
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per file or finding")
    out.add_argument("--sarif", action="store_true", help="a SARIF 2.1.0 log")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="checks at a time (default 1)")
    ap.add_argument("--shard", metavar="K/N", help="scan part K (0-based) of N")
    ap.add_argument("--shards", type=int, metavar="N", help=f"N parts, K from ${INDEX_ENV}")
    ap.add_argument("paths", nargs="+")
    opts = ap.parse_args(argv)
    try:
        k, n = parse_shard(opts.shard, opts.shards)
    except ShardError as exc:
        sys.stderr.write(f"sandboxload scan: {exc}\n")
        return BAD_OPTION
    if opts.jobs < 1:
        sys.stderr.write(f"sandboxload scan: --jobs {opts.jobs}: needs at least 1\n")
        return BAD_OPTION
    found = units.collect(opts.paths)
    # The whole input, not this shard, must hold weights: a shard may rightly get none.
    if not any(u.kind == units.WEIGHTS for u in found):
        return no_weight_files("scan", opts.paths)
    todo = units.shard(found, k, n)
    rows = run(todo, opts.jobs)
    line = report.summary(todo, rows) + (f" (shard {k}/{n})" if n > 1 else "")
    if opts.sarif:
        print(json.dumps(sarif.log(rows, line), indent=1))
    else:
        for row in rows:
            print(report.json_line(row) if opts.json else report.text_line(row))
    # Machine-readable modes keep stdout to the data.
    print(line, file=sys.stderr if opts.json or opts.sarif else sys.stdout)
    return report.exit_status(rows)
