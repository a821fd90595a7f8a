"""``sandboxload doctor``: is this machine and environment ready, and is the hook active?"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata

from . import __version__, policy
from .errors import PolicyError, SandboxLoadError, SandboxViolationError


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _check_sandbox() -> tuple[bool, str]:
    """A real load through the sandbox, then a probe that must be killed by the filter."""
    try:
        import torch

        from .sandbox import session
    except ImportError as exc:
        return False, f"torch is not importable ({exc}); nothing to sandbox"
    pol = policy.current()
    with tempfile.TemporaryFile() as f:
        torch.save({"x": torch.arange(3)}, f)
        f.flush()
        size = f.tell()
        try:
            out = session.load(f.fileno(), size, "torch-zip", "<doctor>", pol, None)
            if not torch.equal(out["x"], torch.arange(3)):
                return False, "a sandboxed load returned wrong data"
        except SandboxLoadError as exc:
            return False, str(exc)
        if not pol.seccomp:
            return False, "SANDBOXLOAD_SECCOMP=off: the child runs without a syscall filter"
        try:
            session.load(f.fileno(), size, "torch-zip", "<doctor>", pol, None, probe="open")
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


def run() -> int:
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
        print(
            f"policy: pickle={pol.pickle} seccomp={'on' if pol.seccomp else 'off'} "
            f"remote_code={pol.remote_code} formats={','.join(pol.formats) or 'all'} "
            f"manifest={pol.manifest or '-'} offline={'on' if pol.offline else 'off'} "
            f"timeout={pol.timeout:g}s audit_log={pol.audit_log or '-'}"
        )
        for name, origin in sorted(pol.origins.items()):
            print(f"  {name} from {origin}")
    except PolicyError as exc:
        print(f"policy: ERROR {exc}")
        return 1
    sandbox_ok, detail = _check_sandbox()
    ok &= sandbox_ok
    print(f"sandbox: {'ok' if sandbox_ok else 'PROBLEM'}: {detail}")
    return 0 if ok else 1
