"""What runs inside a fresh interpreter: one measurement, printed as one JSON line.

    python probe.py cold ROUTE PATH         one first load: time, peak RSS growth, worker peak
    python probe.py warm KIND PATH RUNS     interleaved warm loads of every route of KIND
    python probe.py st DIR                  SentenceTransformer(DIR): time and peak RSS growth

It is run as a script (never imported by the harness), so that each measurement pays only for
its own imports. sandboxload is activated here, in the child, with ``activate()``; the cold
routes run with ``SANDBOXLOAD_SPARE=off`` in their environment (set by the harness), so their
first load starts its worker on the spot. ``st`` activates through the environment
(``SANDBOXLOAD=1``), as a deployment would.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

Loader = Callable[[str], Any]
PICKLE_ROUTES = ("torch", "torch_mmap", "sandboxload", "sandboxload_mmap")
SAFETENSORS_ROUTES = ("safetensors", "sandboxload_safetensors")
MIB_KB = 1024  # /proc and getrusage report kB


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakRss:
    """Peak RSS growth of this process from now on, in MB.

    The kernel's high-water mark is reset first (``clear_refs`` 5), so the peak is the load's
    own; where that is not allowed, the growth of ``ru_maxrss`` is used instead (which misses
    a peak below one reached earlier, e.g. during imports)."""

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = True
            self.base_kb = _status_kb("VmRSS")
        except OSError:
            self.exact = False
            self.base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def growth_mb(self) -> float:
        if self.exact:
            now = _status_kb("VmHWM")
        else:
            now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, now - self.base_kb) / MIB_KB


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


class WorkerPeak:
    """The largest peak RSS (``VmHWM``) of this thread's child processes, sampled every few
    milliseconds while it runs: sandboxload's worker, spawned by the loading thread.

    ``RUSAGE_CHILDREN`` cannot tell it: at ``exec`` the kernel carries over the high-water
    mark of the forking process (this one, with torch imported: ~260 MB) into the child's
    ``ru_maxrss``. A high-water mark only grows, so a sample taken shortly before the worker
    exits is its peak; reading a few small /proc files costs ~50 us a sample. A child that
    has not reached ``exec`` yet still shows this process's memory (and command line): it is
    skipped until its command line is its own."""

    INTERVAL = 0.003

    def __init__(self) -> None:
        self.children = f"/proc/self/task/{threading.get_native_id()}/children"
        self.cmdline = _read_bytes("/proc/self/cmdline")
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        try:
            with open(self.children) as f:
                pids = f.read().split()
        except OSError:
            return
        for pid in pids:
            if _read_bytes(f"/proc/{pid}/cmdline") in (self.cmdline, b""):
                continue  # not yet exec'd (or gone)
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                            break
            except OSError:  # gone meanwhile
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self._sample()

    @property
    def mb(self) -> float:
        return self.peak_kb / MIB_KB


def _activate() -> None:
    import sandboxload

    sandboxload.activate(export_env=False)
    if not sandboxload.is_active():
        raise SystemExit("sandboxload did not activate")


def _plain_safetensors() -> Loader:
    """``safetensors.torch.load_file`` as safetensors writes it, through the unpatched
    ``safe_open`` (usable whether or not sandboxload is active in this process)."""
    import safetensors.torch  # noqa: F401  (imports torch, as load_file does)

    from sandboxload.patches.registry import SAFE_OPEN, original

    safe_open = original(SAFE_OPEN)

    def load_file(path: str) -> Any:
        with safe_open(path, framework="pt") as f:
            return f.get_tensors()

    return load_file


def loader(route: str) -> Loader:
    """The load function of ``route``; imports (and activation) happen here, untimed."""
    import torch

    if route.startswith("sandboxload"):
        _activate()
    if route in ("torch", "sandboxload"):
        return lambda path: torch.load(path, weights_only=True)
    if route in ("torch_mmap", "sandboxload_mmap"):
        return lambda path: torch.load(path, weights_only=True, mmap=True)
    if route == "safetensors":
        return _plain_safetensors()
    if route == "sandboxload_safetensors":
        import safetensors.torch

        return safetensors.torch.load_file
    raise SystemExit(f"unknown route {route!r}")


def _touch(obj: Any) -> float:
    """Read every byte of every tensor once (what using the weights does to RSS)."""
    import torch

    total = 0.0
    values = obj.values() if isinstance(obj, dict) else [obj]
    for value in values:
        if isinstance(value, torch.Tensor):
            total += float(value.sum())
    return total


def cold(route: str, path: str) -> dict[str, Any]:
    """One first load in this fresh process."""
    load = loader(route)
    gc.collect()
    peak = PeakRss()
    with WorkerPeak() as worker:
        start = time.perf_counter()
        obj = load(path)
        ms = (time.perf_counter() - start) * 1000
    rss = peak.growth_mb()
    _touch(obj)
    return {
        "ms": ms,
        "rss_mb": rss,
        "touched_mb": peak.growth_mb(),
        "worker_mb": worker.mb,
        "exact_peak": peak.exact,
    }


def _forget(path: str) -> None:
    """Make sandboxload parse the file afresh: it keeps the description of an unchanged file
    (keyed by inode, size, mtime and ctime), and a new mtime changes that identity."""
    os.utime(path)


def _settle() -> None:
    """Wait until the spare worker started after the previous load is ready, as it is between
    the loads of a real application.

    ``spare.settle()`` (a helper of sandboxload's tests) can pick a thread that another
    thread (the prestart timer) has listed but not started yet, and then fails with
    "cannot join thread before it is started": it is simply called again."""
    try:
        from sandboxload.sandbox import spare
    except ImportError:
        time.sleep(0.5)
        return
    for _ in range(100):
        try:
            spare.settle()
            break
        except RuntimeError:
            time.sleep(0.01)
    time.sleep(0.02)


def warm(kind: str, path: str, runs: int) -> dict[str, list[float]]:
    """Every route of ``kind`` in turn, ``runs`` times, in one process with sandboxload active
    and its spare worker ready; times in ms."""
    routes = PICKLE_ROUTES if kind == "pickle" else SAFETENSORS_ROUTES
    _activate()
    from sandboxload.patches.registry import TORCH_LOAD, original

    plain = original(TORCH_LOAD)  # torch's own load, beside the patched one
    loads: dict[str, Loader] = {}
    for route in routes:
        if route in ("torch", "torch_mmap"):
            mmap = route == "torch_mmap"
            loads[route] = lambda p, m=mmap: plain(p, weights_only=True, mmap=m)
        else:
            loads[route] = loader(route)
    for load in loads.values():  # warm every code path and the page cache
        load(path)
    time.sleep(0.5)  # past sandboxload's prestart of its first spare (0.25 s after patching)
    samples: dict[str, list[float]] = {route: [] for route in routes}
    for _ in range(runs):
        for route, load in loads.items():
            if route.startswith("sandboxload"):
                _forget(path)
                _settle()
            gc.collect()
            start = time.perf_counter()
            obj = load(path)
            samples[route].append((time.perf_counter() - start) * 1000)
            del obj
    return samples


def sentence_transformer(folder: str) -> dict[str, Any]:
    """``SentenceTransformer(folder)`` after its import, and one encode to prove it works."""
    import sandboxload

    start = time.perf_counter()
    from sentence_transformers import SentenceTransformer

    import_ms = (time.perf_counter() - start) * 1000
    gc.collect()
    peak = PeakRss()
    start = time.perf_counter()
    model = SentenceTransformer(folder, device="cpu")
    ms = (time.perf_counter() - start) * 1000
    rss = peak.growth_mb()
    vector = model.encode(["hello"])[0]
    return {
        "ms": ms,
        "import_ms": import_ms,
        "rss_mb": rss,
        "active": sandboxload.is_active(),
        "dims": len(vector),
        "first": float(vector[0]),
    }


def main(argv: list[str]) -> int:
    mode, *args = argv
    if mode == "cold":
        result: Any = cold(args[0], args[1])
    elif mode == "warm":
        result = warm(args[0], args[1], int(args[2]))
    elif mode == "st":
        result = sentence_transformer(args[0])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
