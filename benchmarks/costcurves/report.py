"""results.md from the results: absolute times and sizes, and ratios against the baseline
measured in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .routes import BY_KEY, PAIRS, ROUTES

Result = dict[str, Any]


def value(point: Result, phase: str, route: str, field: str = "ms") -> float | None:
    """``field`` of ``route`` in ``phase`` ("warm" or "cold") of one point, if measured."""
    entry = point.get(phase, {}).get(route)
    return None if entry is None else entry.get(field)


def ratio(point: Result, phase: str, route: str) -> float | None:
    baseline = BY_KEY[route].baseline
    num = value(point, phase, route)
    den = value(point, phase, baseline) if baseline else None
    return num / den if num is not None and den else None


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.1f}" if ms < 10 else f"{ms:,.0f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"**{r:.2f}x**"


def fmt_mb(mb: float | None) -> str:
    return "-" if mb is None else f"{mb:,.0f}" if mb >= 10 else f"{mb:.1f}"


def pair_summary(row: Result) -> str:
    """One line for a with/without pair: both medians and their ratio."""
    p, s = row["plain"]["ms"], row["sandboxload"]["ms"]
    return f"without {fmt_ms(p)} ms, with sandboxload {fmt_ms(s)} ms, {s / p:.3f}x"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def time_table(points: list[Result], phase: str, first: str) -> str:
    """Milliseconds of each route and each sandboxload route's ratio, one row per point."""
    header = [first]
    for sandbox, baseline, _ in PAIRS:
        header += [BY_KEY[baseline].short, BY_KEY[sandbox].short, "ratio"]
    rows = []
    for p in points:
        row = [_axis_cell(p)]
        for sandbox, baseline, _ in PAIRS:
            row += [
                fmt_ms(value(p, phase, baseline)),
                fmt_ms(value(p, phase, sandbox)),
                fmt_ratio(ratio(p, phase, sandbox)),
            ]
        rows.append(row)
    return _table(header, rows)


def rss_table(points: list[Result], field: str, first: str) -> str:
    """Peak RSS growth (MB) of the loading process per route; sandboxload's worker's peak in
    parentheses."""
    header = [first] + [r.short for r in ROUTES]
    rows = []
    for p in points:
        row = [_axis_cell(p)]
        for r in ROUTES:
            cell = fmt_mb(value(p, "cold", r.key, field))
            worker = value(p, "cold", r.key, "worker_mb")
            if r.baseline and worker and field == "rss_mb":
                cell += f" (worker {fmt_mb(worker)})"
            row.append(cell)
        rows.append(row)
    return _table(header, rows)


def _axis_cell(p: Result) -> str:
    if p["axis"] == "count":
        return f"{p['tensors']:,}"
    mb = p.get("file_mb", {}).get("pickle", p["mb"])
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:.2f} MB"


def one_tensor_table(point: Result) -> str:
    rows = []
    for r in ROUTES:
        rows.append(
            [
                r.label,
                fmt_ms(value(point, "warm", r.key)),
                fmt_ms(value(point, "cold", r.key)),
                fmt_ratio(ratio(point, "warm", r.key)) if r.baseline else "",
                fmt_ratio(ratio(point, "cold", r.key)) if r.baseline else "",
            ]
        )
    return _table(["route", "warm ms", "cold ms", "warm ratio", "cold ratio"], rows)


def hf_table(results: Result) -> str:
    rows = []
    hf = results.get("hf", {})
    for name in ("SentenceTransformer safetensors", "SentenceTransformer pickle"):
        if name in hf:
            row = hf[name]
            what = f"`SentenceTransformer(DIR)`, MiniLM {name.split()[1]} copy (fresh process)"
            rows.append(_pair_row(what, row))
            rss = [row["plain"]["rss_mb"], row["sandboxload"]["rss_mb"]]
            rows.append(["... its peak RSS growth (MB)", fmt_mb(rss[0]), fmt_mb(rss[1]), ""])
    for name in ("infinity pickle", "infinity safetensors"):
        if name in hf:
            what = f"infinity_emb v2 start to first answered request, MiniLM {name.split()[1]}"
            rows.append(_pair_row(what, hf[name]))
    for row in results.get("startup", []):
        rows.append(_pair_row(f"`{row['command']}` (`SANDBOXLOAD=1`)", row))
    return _table(["what", "without (ms)", "with sandboxload (ms)", "ratio"], rows)


def _pair_row(what: str, row: Result) -> list[str]:
    p, s = row["plain"]["ms"], row["sandboxload"]["ms"]
    return [what, fmt_ms(p), fmt_ms(s), f"**{s / p:.3f}x**"]


def _machine(results: Result) -> str:
    m = results["meta"]
    v = m["versions"]
    inf = results.get("hf", {}).get("infinity_venv", {})
    infinity = (
        f" infinity rows on `.venv-infinity` (transformers {inf.get('transformers')}, "
        f"sentence-transformers {inf.get('sentence-transformers')}, infinity-emb "
        f"{inf.get('infinity-emb')})."
        if inf
        else ""
    )
    return (
        f"Measured {m['date']} by `.venv/bin/python benchmarks/run"
        f"{' --quick' if results.get('quick') else ''}` in {results['elapsed_s'] / 60:.1f} "
        f"min on {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux {m['kernel']} "
        f"(shmem huge pages: `{m['shmem_thp']}`); Python {m['python']}, torch "
        f"{v['torch']}, safetensors {v['safetensors']}, transformers {v['transformers']}, "
        f"sentence-transformers {v['sentence-transformers']}; sandboxload {m['sandboxload']}."
        f"{infinity} Load average (1, 5, 15 min) {m['loadavg_start']} at the start, "
        f"{m.get('loadavg_end')} at the end."
        + (
            " **sandboxload's source changed during this run**: the numbers mix versions."
            if m.get("source_changed")
            else ""
        )
        + "\n"
    )


HOW_TO_READ = """\
Every ratio is sandboxload's route over the route it replaces, measured in the same run:
**sandboxload** (the patched `torch.load`: parsed in the confined worker, tensors own their
memory) over **torch** (`torch.load(weights_only=True)`); **sandboxload mmap** (the patched
`torch.load(mmap=True)`: tensors map the file) over **torch mmap**
(`torch.load(weights_only=True, mmap=True)`); and **sandboxload load_file** (the patched
`safetensors.torch.load_file`: header checked, then mapped) over safetensors' own
**load_file**. Pickle files are written by `torch.save`, safetensors files by
`safetensors.torch.save_file`, from the same random float32 tensors. The page cache is warm
throughout (each file is written and flushed before it is measured).

- **warm**: median of {warm} interleaved loads per route in one process, sandboxload active
  and its spare worker ready (the state between loads of a running server); each
  sandboxload load parses the file afresh (its kept description is invalidated first).
- **cold**: the first load in a fresh interpreter, imports done, median of {cold}
  processes; sandboxload with `SANDBOXLOAD_SPARE=off`, so its worker interpreter starts
  on the spot (the worst case: a server's first load usually finds the spare ready).
- **peak RSS**: growth of the loading process's high-water mark over the (cold) load,
  and after every tensor has been read once; the peak of sandboxload's worker process
  (sampled) in parentheses. A route whose RSS at load stays near zero maps the file: its
  tensors are page cache, counted once read.
"""


def markdown(results: Result, plots: list[Path]) -> str:
    points = results["points"]
    plan = results["plan"]
    by_axis = {a: [p for p in points if p["axis"] == a] for a in ("size", "count", "one")}
    parts = [
        "# sandboxload cost curves\n",
        _machine(results),
        HOW_TO_READ.format(warm=plan["warm_runs"], cold=plan["cold_rounds"]),
    ]
    parts += [f"![{p.stem.replace('_', ' ')}]({p.name})\n" for p in plots]
    if by_axis["size"]:
        n = plan["size_tensors"]
        for phase in ("warm", "cold"):
            parts.append(f"## Load time (ms) over file size, {n} tensors: {phase}\n")
            parts.append(time_table(by_axis["size"], phase, "file"))
    if by_axis["count"]:
        mb = plan["count_mb"]
        for phase in ("warm", "cold"):
            parts.append(f"## Load time (ms) over tensor count, {mb:g} MB in all: {phase}\n")
            parts.append(time_table(by_axis["count"], phase, "tensors"))
    for point in by_axis["one"]:
        parts.append("## One tensor (256x256 float32, a 256 KB file)\n")
        parts.append(one_tensor_table(point))
    for axis, first, over in (("size", "file", "file size"), ("count", "tensors", "tensor count")):
        if by_axis[axis]:
            for field, when in (
                ("rss_mb", "at load"),
                ("touched_mb", "after reading every tensor"),
            ):
                parts.append(f"## Peak RSS growth (MB) over {over}: {when}\n")
                parts.append(rss_table(by_axis[axis], field, first))
    parts.append("## Hugging Face loaders and start-up (fresh processes, alternating)\n")
    parts.append(hf_table(results))
    failures = _failures(results)
    if failures:
        parts.append("## Failures and skips\n")
        parts.append("\n".join(failures) + "\n")
    parts.append("Raw numbers, every sample: [results.json](results.json).\n")
    return "\n".join(parts)


def _failures(results: Result) -> list[str]:
    lines = []
    for p in results["points"]:
        lines += [f"- {p['label']}, {what}: {err}" for what, err in p["errors"].items()]
    lines += [f"- {what}: {err}" for what, err in results.get("hf", {}).get("errors", {}).items()]
    return lines


def write_plots(results: Result, out: Path) -> list[Path] | None:
    """The PNGs, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    from . import plots

    return plots.write(results, out)
