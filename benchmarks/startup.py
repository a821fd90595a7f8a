"""Start-up cost of activation, as ratios against the same command without sandboxload.

    python benchmarks/startup.py [--runs N] [--torch-runs N] [--json FILE]

Runs are interleaved (plain, sandboxload, plain, ...) so drift hits both sides equally;
the ratio is of medians. Targets: ``python -c pass`` <= 1.05, ``python -c "import torch"``
<= 1.03 (torch gets patched on import in the second case).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _env(active: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXLOAD")}
    if active:
        env["SANDBOXLOAD"] = "1"
    return env


def _time(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - start


def compare(code: str, runs: int, target: float) -> dict[str, object]:
    plain_env, active_env = _env(False), _env(True)
    _time(code, plain_env), _time(code, active_env)  # warm the page cache and pyc files
    plain, active = [], []
    for _ in range(runs):
        plain.append(_time(code, plain_env))
        active.append(_time(code, active_env))
    p, a = statistics.median(plain), statistics.median(active)
    return {
        "command": f"python -c {code!r}",
        "runs": runs,
        "plain_ms": round(p * 1000, 2),
        "sandboxload_ms": round(a * 1000, 2),
        "ratio": round(a / p, 4),
        "target": target,
        "ok": a / p <= target,
    }


def main() -> int:
    # With PYTHONDONTWRITEBYTECODE an editable install would recompile the hook on every start.
    import compileall

    compileall.compile_dir(os.path.join(os.path.dirname(__file__), "..", "sandboxload"), quiet=1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--torch-runs", type=int, default=15)
    ap.add_argument("--json", metavar="FILE")
    opts = ap.parse_args()
    results = [
        compare("pass", opts.runs, 1.05),
        compare("import torch", opts.torch_runs, 1.03),
    ]
    for r in results:
        print(
            f"{r['command']:<28} plain {r['plain_ms']:>8.2f} ms  sandboxload "
            f"{r['sandboxload_ms']:>8.2f} ms  ratio {r['ratio']:.3f} (target <= {r['target']}) "
            f"{'ok' if r['ok'] else 'OVER'}"
        )
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
