"""``sandboxload scan PATH...``: what each weight file is, and what a load of it would do.

Each file goes through the loader's own decision (:func:`loader.decide`: sniff, then
:func:`routes.route` under the current policy) and its hash pinning, so a verdict here is the
route the patched ``torch.load`` takes. Then the route's check, without loading anything:
safetensors get the strict header check; pickles are parsed in the sandbox (nothing is built),
so one that names a global outside the allowlist is reported with that global.

Verdicts: ``ok`` (loads safely), ``refused`` (the policy or a check refuses it), ``unsafe``
(``pickle=allow`` would load it in-process, and it is not plain data), ``error`` (unreadable).
Exit status: 0 every file ok, 1 some file refused or unsafe, 2 some file could not be read.
"""

from __future__ import annotations

import argparse
import json

from .. import formats, loader, policy, routes
from ..errors import SandboxLoadError
from ..modelfolder import weight_files


def classify(path: str, pol: policy.Policy | None = None) -> dict[str, str]:
    """{"file", "format", "route", "verdict", "detail"} for one file."""
    pol = pol or policy.current()
    result = {"file": path, "format": "-", "route": routes.REFUSED}
    try:
        with loader.open_source(path) as src:
            a = loader.decide(src, pol, "scan", routes.ANY_WEIGHTS, audit=False)
            result.update(format=a.fmt, route=a.route.name)
            if a.route.refused:
                raise a.route.refusal(path)
            loader.pin(a)
            verdict, detail = _check(a)
    except SandboxLoadError as exc:
        verdict, detail = "refused", f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        verdict, detail = "error", exc.strerror or str(exc)
    return {**result, "verdict": verdict, "detail": detail}


def _check(a: loader.Admitted) -> tuple[str, str]:
    assert a.src.fd is not None
    if a.route.name == routes.SAFETENSORS:
        from ..safetensors_header import read_header

        header = read_header(a.src.fd, a.src.name)
        return "ok", f"valid header, {len(header.tensors)} tensors"
    reader = formats.READER.get(a.fmt)
    if a.route.name == routes.IN_PROCESS and reader is None:
        return "unsafe", f"pickle=allow hands this {a.fmt} file to torch's own loader in-process"
    assert reader is not None
    from ..sandbox.load import parse_only  # imports torch: only when a pickle is scanned

    try:
        storages = parse_only(a.src.fd, a.src.size, reader, a.src.name, a.pol)
    except SandboxLoadError as exc:
        if a.route.name == routes.IN_PROCESS:
            return "unsafe", f"pickle=allow would load it in-process: {type(exc).__name__}: {exc}"
        raise
    where = "in-process (pickle=allow)" if a.route.name == routes.IN_PROCESS else "the sandbox"
    return "ok", f"pickle with only data: {storages} storages (loads through {where})"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sandboxload scan", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per file")
    ap.add_argument("paths", nargs="+")
    opts = ap.parse_args(argv)
    results = [classify(p) for p in weight_files(opts.paths)]
    for r in results:
        if opts.json:
            print(json.dumps(r))
        else:
            print(f"{r['verdict'].upper():<8} {r['format']:<12} {r['file']}: {r['detail']}")
    verdicts = {r["verdict"] for r in results}
    if "error" in verdicts:
        return 2
    return 1 if verdicts & {"refused", "unsafe"} else 0
