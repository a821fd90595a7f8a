"""The PNG plots (matplotlib, the ``bench`` extra): time and ratio over size and over
tensor count, peak RSS over size and over count."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from .report import ratio, value
from .routes import BY_KEY, PAIRS, ROUTES

Result = dict[str, Any]
COLORS = {"default": "tab:blue", "mmap=True": "tab:orange", "safetensors": "tab:green"}
DPI = 100


def _x(point: Result) -> float:
    if point["axis"] == "count":
        return float(point["tensors"])
    return float(point.get("file_mb", {}).get("pickle", point["mb"]))


def _series(
    points: list[Result], get: Callable[[Result], float | None]
) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for p in points:
        y = get(p)
        if y is not None:
            xs.append(_x(p))
            ys.append(y)
    return xs, ys


def _number(v: float) -> str:
    """A tick label: whole numbers from 10 on (a 10.05 MB file is "10"), else 3 digits."""
    return f"{v:,.0f}" if v >= 10 else f"{v:.3g}"


def _log(ax: Axes) -> None:
    """Log scales labelled as plain numbers (ticks: :func:`_ticks`)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_locator(NullLocator())
        axis.set_major_formatter(FuncFormatter(lambda v, _: _number(v)))


def _ticks(ax: Axes, points: list[Result]) -> None:
    """x ticks at the measured points; y ticks at 1-2-5 per decade, or denser when the data
    span less than two decades."""
    ax.set_xticks([_x(p) for p in points])
    low, high = ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if high / low > 100 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=40))


def _times(ax: Axes, points: list[Result]) -> None:
    for sandbox, baseline, name in PAIRS:
        color = COLORS[name]
        ax.plot(
            *_series(points, lambda p, r=baseline: value(p, "warm", r)),
            ls="--",
            marker="o",
            ms=3,
            color=color,
            label=BY_KEY[baseline].label,
        )
        ax.plot(
            *_series(points, lambda p, r=sandbox: value(p, "warm", r)),
            ls="-",
            marker="o",
            ms=4,
            color=color,
            label=BY_KEY[sandbox].label,
        )
    _log(ax)
    ax.set_ylabel("load time (ms)")
    ax.set_title("warm; dashed: torch / safetensors, solid: sandboxload", fontsize=9)
    ax.legend(fontsize=7)


def _ratios(ax: Axes, points: list[Result]) -> None:
    for sandbox, _, name in PAIRS:
        for phase, ls in (("warm", "-"), ("cold", ":")):
            ax.plot(
                *_series(points, lambda p, r=sandbox, ph=phase: ratio(p, ph, r)),
                ls=ls,
                marker="o",
                ms=3,
                color=COLORS[name],
                label=f"{name}, {phase}",
            )
    ax.axhline(1.0, color="grey", lw=0.8)
    _log(ax)
    ax.set_ylabel("sandboxload / the route it replaces")
    ax.set_title("ratio; solid: warm (spare ready), dotted: cold (fresh process)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)


def _positive(v: float | None) -> float | None:
    return v if v is not None and v > 0 else None  # a log axis has no 0


def _rss(ax: Axes, points: list[Result], field: str, title: str) -> None:
    for r in ROUTES:
        pair = next(name for s, b, name in PAIRS if r.key in (s, b))
        ax.plot(
            *_series(points, lambda p, k=r.key: _positive(value(p, "cold", k, field))),
            ls="-" if r.baseline else "--",
            marker="o",
            ms=3,
            color=COLORS[pair],
            label=r.label,
        )
    _log(ax)
    ax.set_ylabel("peak RSS growth (MB)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def _figure(
    path: Path,
    points: list[Result],
    xlabel: str,
    title: str,
    draw: list[Callable[[Axes], None]],
) -> Path:
    fig, axes = plt.subplots(1, len(draw), figsize=(11, 4.2))
    for ax, fn in zip(axes, draw, strict=True):
        fn(ax)
        _ticks(ax, points)
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.25)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write(results: Result, out: Path) -> list[Path]:
    points = results["points"]
    size = [p for p in points if p["axis"] == "size"]
    count = [p for p in points if p["axis"] == "count"]
    plan = results["plan"]
    n, mb = plan["size_tensors"], plan["count_mb"]
    written = []
    if size:
        written.append(
            _figure(
                out / "time_vs_size.png",
                size,
                "checkpoint size (MB)",
                f"Load time over checkpoint size ({n} float32 tensors)",
                [lambda ax: _times(ax, size), lambda ax: _ratios(ax, size)],
            )
        )
        written.append(
            _figure(
                out / "rss_vs_size.png",
                size,
                "checkpoint size (MB)",
                f"Peak RSS growth of the loading process over size ({n} tensors; fresh "
                "process; dashed: torch / safetensors, solid: sandboxload)",
                [
                    lambda ax: _rss(ax, size, "rss_mb", "at load"),
                    lambda ax: _rss(ax, size, "touched_mb", "after reading every tensor"),
                ],
            )
        )
    if count:
        written.append(
            _figure(
                out / "time_vs_count.png",
                count,
                "tensors in the checkpoint",
                f"Load time over tensor count ({mb:g} MB of float32 in all)",
                [lambda ax: _times(ax, count), lambda ax: _ratios(ax, count)],
            )
        )
        written.append(
            _figure(
                out / "rss_vs_count.png",
                count,
                "tensors in the checkpoint",
                f"Peak RSS growth of the loading process over tensor count ({mb:g} MB; fresh "
                "process; dashed: torch / safetensors, solid: sandboxload)",
                [
                    lambda ax: _rss(ax, count, "rss_mb", "at load"),
                    lambda ax: _rss(ax, count, "touched_mb", "after reading every tensor"),
                ],
            )
        )
    return written
