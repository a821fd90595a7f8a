"""The routes measured, and which route each sandboxload route is a ratio against."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    key: str  # as the probe names it
    label: str
    short: str  # a table header
    kind: str  # the checkpoint it loads: "pickle" or "safetensors"
    baseline: str | None  # the key of the route it is a ratio against (None: a baseline)


ROUTES = (
    Route("torch", "torch.load(weights_only=True)", "torch", "pickle", None),
    Route("sandboxload", "sandboxload torch.load", "sandboxload", "pickle", "torch"),
    Route(
        "torch_mmap",
        "torch.load(weights_only=True, mmap=True)",
        "torch mmap",
        "pickle",
        None,
    ),
    Route(
        "sandboxload_mmap",
        "sandboxload torch.load(mmap=True)",
        "sandboxload mmap",
        "pickle",
        "torch_mmap",
    ),
    Route("safetensors", "safetensors.torch.load_file", "load_file", "safetensors", None),
    Route(
        "sandboxload_safetensors",
        "sandboxload load_file",
        "sandboxload load_file",
        "safetensors",
        "safetensors",
    ),
)
BY_KEY = {r.key: r for r in ROUTES}
KINDS = ("pickle", "safetensors")
# (sandboxload route, its baseline, a short name for tables and legends)
PAIRS = (
    ("sandboxload", "torch", "default"),
    ("sandboxload_mmap", "torch_mmap", "mmap=True"),
    ("sandboxload_safetensors", "safetensors", "safetensors"),
)


def of_kind(kind: str) -> tuple[Route, ...]:
    return tuple(r for r in ROUTES if r.kind == kind)
