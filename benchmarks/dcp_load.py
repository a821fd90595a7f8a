"""What sandboxload costs ``torch.distributed.checkpoint.load``, as a ratio to it.

dcp stores every tensor and every value as its own ``torch.save`` record and hands each to
``torch.load``: under sandboxload each is a sandbox round trip. Writes a checkpoint of
``--tensors`` tensors of ``--numel`` float32 each with ``dcp.save``, then times
``dcp.load`` into a state dict (median of ``--repeat``), unprotected and with sandboxload,
each in a fresh interpreter. Run: ``.venv/bin/python benchmarks/dcp_load.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

TIMED = """
import statistics, sys, time, warnings
warnings.simplefilter("ignore")  # "torch.distributed is disabled": one process, intended
if sys.argv[1] == "on":
    import sandboxload
    sandboxload.activate()
import torch
import torch.distributed.checkpoint as dcp
ck, n, numel, repeat = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if sys.argv[1] == "save":
    dcp.save({f"t{i}": torch.randn(numel) for i in range(n)}, checkpoint_id=ck)
    raise SystemExit
times = []
for _ in range(repeat):
    sd = {f"t{i}": torch.empty(numel) for i in range(n)}
    start = time.perf_counter()
    dcp.load(sd, checkpoint_id=ck)
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def timed(mode: str, ck: str, args: argparse.Namespace) -> float:
    argv = [mode, ck, str(args.tensors), str(args.numel), str(args.repeat)]
    out = subprocess.run(
        [sys.executable, "-c", TIMED, *argv], check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip() or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--numel", type=int, default=262_144, help="float32 elements each")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ck = f"{tmp}/ck"
        timed("save", ck, args)
        off, on = timed("off", ck, args), timed("on", ck, args)
    size = args.tensors * args.numel * 4 / 2**20
    print(
        f"dcp.load of {args.tensors} tensors ({size:.1f} MiB): {off * 1000:.0f} ms unprotected, "
        f"{on * 1000:.0f} ms with sandboxload ({on / off:.1f}x; "
        f"{(on - off) / args.tensors * 1000:.1f} ms more per record)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
