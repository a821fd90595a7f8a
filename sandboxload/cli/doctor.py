"""``sandboxload doctor``: is this machine ready, is the hook active, what is the policy?

Every setting is printed with its value and where that value came from (default, policy
file, env variable or wrapper option); then the route each format takes under that policy
(from :func:`routes.route`, as the loaders decide), then a real sandboxed load and a probe the
seccomp filter must kill.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata

from .. import __version__, formats, policy, routes
from ..errors import PolicyError, SandboxLoadError, SandboxViolationError
from ..sandbox.protocol import READ_ZIP


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _check_sandbox(pol: policy.Policy) -> tuple[bool, str]:
    """A real load through the sandbox, then a probe that must be killed by the filter."""
    try:
        import torch

        from ..sandbox.load import load
    except ImportError as exc:
        return False, f"torch is not importable ({exc}); nothing to sandbox"
    with tempfile.TemporaryFile() as f:
        torch.save({"x": torch.arange(3)}, f)
        f.flush()
        size = f.tell()
        try:
            out = load(f.fileno(), size, READ_ZIP, "<doctor>", pol, None)
            if not torch.equal(out["x"], torch.arange(3)):
                return False, "a sandboxed load returned wrong data"
        except SandboxLoadError as exc:
            return False, str(exc)
        if not pol.seccomp:
            return False, "SANDBOXLOAD_SECCOMP=off: the child runs without a syscall filter"
        try:
            load(f.fileno(), size, READ_ZIP, "<doctor>", pol, None, probe="open")
        except SandboxViolationError:
            return True, "loads work; a forbidden open() in the child is killed by seccomp"
        except SandboxLoadError as exc:
            return False, f"the probe failed in an unexpected way: {exc}"
    return False, "a forbidden open() in the child was NOT stopped"


def _hook_active() -> bool:
    env = {**os.environ, "SANDBOXLOAD": "1"}
    code = (
        "import sys; b = sys.modules.get('sandboxload.bootstrap'); print(bool(b and b.is_active()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return proc.stdout.strip() == "True"


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(value) or "-"
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(
        prog="sandboxload doctor",
        description="Versions, the start-up hook, every setting with its value and origin, the "
        "route of each format, and a real sandboxed load plus a probe the seccomp filter must "
        "kill. Exit status 0 when all is well, 1 otherwise.",
    ).parse_args(argv)
    ok = True
    print(f"sandboxload {__version__} on Python {sys.version.split()[0]} ({sys.executable})")
    for dist in ("torch", "safetensors", "transformers", "sentence-transformers", "pyseccomp"):
        print(f"  {dist:<22} {_version(dist)}")
    pth = os.path.join(sysconfig.get_paths()["purelib"], "sandboxload_startup.pth")
    hook = _hook_active()
    ok &= hook
    print(
        f"start-up hook: {pth} {'present' if os.path.exists(pth) else 'MISSING'}; "
        f"SANDBOXLOAD=1 {'activates' if hook else 'does NOT activate'} a new interpreter"
    )
    try:
        pol = policy.current()
        policy.allowed_globals(pol)  # imports the modules named, as the first load would
    except PolicyError as exc:
        print(f"policy: ERROR {exc}")
        return 1
    print("policy:")
    for s in policy.SETTINGS:
        origin = pol.origins.get(s.name, "default")
        print(f"  {s.name:<14} {_show(getattr(pol, s.name)):<24} from {origin}")
    print("routes under this policy (what torch.load does with each format):")
    for fmt in formats.SNIFFED:
        r = routes.route(fmt, pol)
        print(f"  {fmt:<13} -> {r.name:<18} {r.reason}")
    sandbox_ok, detail = _check_sandbox(pol)
    ok &= sandbox_ok
    print(f"sandbox: {'ok' if sandbox_ok else 'PROBLEM'}: {detail}")
    return 0 if ok else 1
