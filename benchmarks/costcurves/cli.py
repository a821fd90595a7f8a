"""``benchmarks/run``: every cost curve in one run; a table, plots and raw JSON."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import checkpoints, machine, measure, report, services
from .checkpoints import Point
from .routes import KINDS, of_kind

REPO = machine.REPO
INFINITY_PYTHON = REPO / ".venv-infinity" / "bin" / "python"


@dataclass(frozen=True)
class Plan:
    sizes_mb: tuple[float, ...]  # the size axis, at ``size_tensors`` tensors
    size_tensors: int
    counts: tuple[int, ...]  # the count axis, at ``count_mb`` in total
    count_mb: float
    warm_runs: int  # interleaved warm loads per route, in one process
    cold_rounds: int  # fresh processes per route
    st_rounds: int  # SentenceTransformer: fresh processes per side
    infinity_rounds: int  # infinity starts per side (0: skipped)
    pass_runs: int  # python -c pass, per side
    torch_runs: int  # python -c "import torch", per side

    def points(self) -> list[Point]:
        return [
            *(Point("size", mb, self.size_tensors) for mb in self.sizes_mb),
            *(Point("count", self.count_mb, n) for n in self.counts),
            Point("one", 0.25, 1),  # one 256x256 tensor, as benchmarks/sandbox_load.py
        ]


FULL = Plan(
    sizes_mb=(10, 50, 200, 500, 1024, 2048),
    size_tensors=200,
    counts=(10, 100, 1000, 5000, 20000),
    count_mb=50,
    warm_runs=7,
    cold_rounds=3,
    st_rounds=3,
    infinity_rounds=3,
    pass_runs=40,
    torch_runs=10,
)
QUICK = Plan(
    sizes_mb=(10, 50),
    size_tensors=200,
    counts=(10, 1000),
    count_mb=10,
    warm_runs=3,
    cold_rounds=1,
    st_rounds=1,
    infinity_rounds=0,
    pass_runs=10,
    torch_runs=3,
)


class Progress:
    """One short line per measurement on stderr, with the time since the start."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.start)
        print(f"[{elapsed // 60:2d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def warm_loads(kind: str, path: Path, runs: int, into: dict[str, Any]) -> str:
    """Interleaved warm loads of ``kind``'s routes into ``into['warm']``; a summary."""
    samples = measure.warm(kind, path, runs)
    for route, times in samples.items():
        into["warm"][route] = {"ms": statistics.median(times), "samples": times}
    return ", ".join(f"{r} {_ms(into['warm'][r]['ms'])}" for r in samples)


def cold_loads(kind: str, path: Path, rounds: int, into: dict[str, Any], log: Progress) -> None:
    """``rounds`` fresh-process first loads of each of ``kind``'s routes, interleaved."""
    runs: dict[str, list[dict[str, Any]]] = {r.key: [] for r in of_kind(kind)}
    for i in range(rounds):
        done = []
        for route, done_runs in runs.items():
            try:
                last = measure.cold(route, path)
                done_runs.append(last)
                done.append(f"{route} {_ms(last['ms'])} +{last['rss_mb']:.0f} MB")
            except (measure.ProbeError, OSError) as exc:
                into["errors"][f"cold {route}"] = str(exc)
                done.append(f"{route} FAILED")
        log(f"  {kind} cold {i + 1}/{rounds}: {', '.join(done)}")
    for route, results in runs.items():
        if results:
            into["cold"][route] = measure.medians(results)


def measure_point(point: Point, plan: Plan, scratch: Path, log: Progress) -> dict[str, Any]:
    """Both files of one checkpoint shape, one after the other (one big file at a time)."""
    result: dict[str, Any] = {
        **asdict(point),
        "label": point.label,
        "file_mb": {},
        "warm": {},
        "cold": {},
        "errors": {},
    }
    log(f"{point.label}: building")
    sd = checkpoints.state_dict(point)
    for kind in KINDS:
        if not checkpoints.room_for(point, scratch):
            result["errors"][kind] = f"not enough free space in {scratch}"
            log(f"{point.label}: {kind} skipped, not enough free space in {scratch}")
            continue
        path = checkpoints.write(sd, kind, scratch)
        try:
            result["file_mb"][kind] = path.stat().st_size / checkpoints.MIB
            try:
                summary = warm_loads(kind, path, plan.warm_runs, result)
                log(f"  {kind} warm x{plan.warm_runs}: {summary}")
            except (measure.ProbeError, OSError) as exc:
                result["errors"][f"warm {kind}"] = str(exc)
                log(f"  {kind} warm FAILED: {exc}")
            cold_loads(kind, path, plan.cold_rounds, result, log)
        finally:
            path.unlink()
    del sd
    return result


def hf_rows(plan: Plan, scratch: Path, opts: argparse.Namespace, log: Progress) -> dict[str, Any]:
    """SentenceTransformer on both MiniLM copies; infinity on both, where it can run."""
    rows: dict[str, Any] = {"errors": {}}
    folders = services.minilm_folders(scratch)
    for kind, folder in folders.items():
        name = f"SentenceTransformer {kind}"
        try:
            rows[name] = services.sentence_transformer(folder, plan.st_rounds)
            log(f"{name}: {report.pair_summary(rows[name])}")
        except (measure.ProbeError, OSError) as exc:
            rows["errors"][name] = str(exc)
            log(f"{name} FAILED: {exc}")
    python = Path(opts.infinity_python)
    if plan.infinity_rounds == 0 or opts.no_infinity:
        rows["errors"]["infinity"] = "skipped (--quick or --no-infinity)"
    elif not python.exists():
        rows["errors"]["infinity"] = f"skipped: {python} does not exist (scripts/setup.sh)"
    else:
        rows["infinity_venv"] = machine.infinity_versions(python)
        for kind in ("pickle", "safetensors"):
            name = f"infinity {kind}"
            try:
                rows[name] = services.infinity(python, folders[kind], plan.infinity_rounds)
                log(f"{name}: {report.pair_summary(rows[name])}")
            except (measure.ProbeError, OSError) as exc:
                rows["errors"][name] = str(exc)
                log(f"{name} FAILED: {exc}")
    if rows["errors"].get("infinity"):
        log(f"infinity: {rows['errors']['infinity']}")
    return rows


def startup_rows(plan: Plan, log: Progress) -> list[dict[str, Any]]:
    rows = []
    for code, runs in (("pass", plan.pass_runs), ("import torch", plan.torch_runs)):
        row = services.startup(code, runs)
        log(f"{row['command']} x{runs}: {report.pair_summary(row)}")
        rows.append(row)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="benchmarks/run",
        description="Cost curves of sandboxload: load time and peak RSS over checkpoint size "
        "and tensor count, against torch and safetensors, measured in one run.",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small files, few runs, no infinity: a smoke check (about a minute)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        help="where results.md, results.json and the plots go "
        "(default: docs/bench; with --quick, benchmarks/results, which git ignores)",
    )
    ap.add_argument(
        "--scratch",
        type=Path,
        help="directory for the checkpoints (default: the system temp dir); needs ~3.5 GB",
    )
    ap.add_argument("--no-infinity", action="store_true", help="skip the infinity rows")
    ap.add_argument(
        "--infinity-python",
        default=str(INFINITY_PYTHON),
        help="interpreter of the venv where infinity_emb can start (default: .venv-infinity)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    plan = QUICK if opts.quick else FULL
    out = opts.out or (REPO / "benchmarks" / "results" if opts.quick else REPO / "docs" / "bench")
    log = Progress()
    results: dict[str, Any] = {
        "meta": machine.collect(),
        "quick": opts.quick,
        "plan": asdict(plan),
    }
    meta = results["meta"]
    log(f"sandboxload {meta['sandboxload']}; load average {meta['loadavg_start']}; to {out}")
    if meta["loadavg_start"][0] > 0.5 * (meta["cores"] or 1):
        log("the machine is busy: numbers will be noisy (ratios less so: runs are interleaved)")
    results["startup"] = startup_rows(plan, log)
    with tempfile.TemporaryDirectory(prefix="sandboxload-bench-", dir=opts.scratch) as tmp:
        scratch = Path(tmp)
        results["points"] = [measure_point(p, plan, scratch, log) for p in plan.points()]
        results["hf"] = hf_rows(plan, scratch, opts, log)
    results["elapsed_s"] = round(time.monotonic() - log.start, 1)
    meta["loadavg_end"] = machine.load_average()
    meta["source_changed"] = machine.source_digest() != meta["source_digest"]
    if meta["source_changed"]:
        log("sandboxload's source changed during the run: the numbers mix two versions")
    out.mkdir(parents=True, exist_ok=True)
    plots = report.write_plots(results, out)
    if plots is None:
        log("matplotlib is not installed: no plots (pip install -e '.[bench]'); table written")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(report.markdown(results, plots or []))
    log(f"done in {results['elapsed_s']:.0f} s: {out / 'results.md'}")
    return 0
