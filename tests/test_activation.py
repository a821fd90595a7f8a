"""Each activation surface, in real interpreters of this environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .helpers import (
    PY,
    clean_env,
    run_py,
)

STATE = (
    "import sys, json; b = sys.modules.get('sandboxload.bootstrap'); "
    "print(json.dumps(bool(b and b.is_active())))"
)
SITE_DIR = subprocess.run(
    [PY, "-m", "sandboxload", "--site-dir"], capture_output=True, text=True, check=True
).stdout.strip()


def active(*flags: str, **env: str) -> bool:
    proc = run_py(STATE, *flags, env=clean_env(**env))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "TRUE", " On "])
def test_env_flag_true_words_activate(value: str) -> None:
    assert active(SANDBOXLOAD=value)


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "", "2"])
def test_env_flag_other_values_do_not(value: str) -> None:
    assert not active(SANDBOXLOAD=value)


def test_no_flag_no_import() -> None:
    proc = run_py("import sys; print(any(m.startswith('sandboxload') for m in sys.modules))")
    assert proc.stdout.strip() == "False"


def test_activation_imports_nothing_heavy() -> None:
    """With the flag on, start-up adds only sandboxload's own small modules."""
    code = "import sys, json; print(json.dumps(sorted(sys.modules)))"
    off = set(json.loads(run_py(code).stdout))
    on_proc = run_py("import sandboxload; " + code, env=clean_env(SANDBOXLOAD="1"))
    on = set(json.loads(on_proc.stdout))
    added = on - off
    assert "torch" not in on
    # Exactly the package and its start-up module: nothing else, not even stdlib extras.
    assert added == {"sandboxload", "sandboxload.bootstrap"}, added


def test_torch_is_patched_when_imported_later(checkpoints: dict[str, Path]) -> None:
    code = (
        "import sys; assert 'torch' not in sys.modules\n"
        "import torch, sandboxload\n"
        f"try:\n    torch.load({str(checkpoints['zip'])!r}, weights_only=False)\n"
        "except sandboxload.PickleRefusedError:\n    print('refused')\n"
    )
    proc = run_py(code, env=clean_env(SANDBOXLOAD="1", SANDBOXLOAD_PICKLE="refuse"))
    assert proc.stdout.strip() == "refused", proc.stderr


def test_activate_patches_an_already_imported_torch(checkpoints: dict[str, Path]) -> None:
    code = (
        "import torch, sandboxload, os\n"
        "assert not getattr(torch.load, '__sandboxload__', False)\n"
        "sandboxload.activate(); sandboxload.activate()\n"
        "from sandboxload.patches.registry import original, TORCH_LOAD\n"
        "from sandboxload.patches._common import is_patched\n"
        "assert not is_patched(original(TORCH_LOAD))\n"
        f"try:\n    torch.serialization.load({str(checkpoints['legacy'])!r})\n"
        "except sandboxload.PickleRefusedError:\n"
        "    print('refused', os.environ['SANDBOXLOAD'])\n"
    )
    proc = run_py(code, env=clean_env(SANDBOXLOAD_PICKLE="refuse"))
    assert proc.stdout.strip() == "refused 1", proc.stderr


def test_site_dir_runs_the_shadowed_sitecustomize(tmp_path: Path) -> None:
    shadowed = tmp_path / "other"
    shadowed.mkdir()
    marker = tmp_path / "marker"
    (shadowed / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    env = clean_env(PYTHONPATH=os.pathsep.join([SITE_DIR, str(shadowed)]))
    proc = run_py(STATE, env=env)
    assert json.loads(proc.stdout) is True, proc.stderr
    assert marker.read_text() == "ran"


def test_site_dir_alone(tmp_path: Path) -> None:
    assert active(PYTHONPATH=SITE_DIR)
    # Both surfaces at once: one activation, torch patched once.
    code = (
        "import torch; from sandboxload.patches.registry import original, TORCH_LOAD; "
        "from sandboxload.patches._common import is_patched; "
        "print(is_patched(torch.load), is_patched(original(TORCH_LOAD)))"
    )
    proc = run_py(code, env=clean_env(PYTHONPATH=SITE_DIR, SANDBOXLOAD="1"))
    assert proc.stdout.strip() == "True False", proc.stderr


# What each interpreter flag does to each surface; documented in docs/cli.md.
@pytest.mark.parametrize(
    ("flags", "env_flag", "site_dir"),
    [
        (("-I",), True, False),
        (("-E",), True, False),
        (("-s",), True, True),
        (("-S",), False, False),
    ],
)
def test_interpreter_flags(flags: tuple[str, ...], env_flag: bool, site_dir: bool) -> None:
    assert active(*flags, SANDBOXLOAD="1") is env_flag
    assert active(*flags, PYTHONPATH=SITE_DIR) is site_dir


def test_multiprocessing_spawn_children_are_covered(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    script = tmp_path / "mp.py"
    script.write_text(
        "import multiprocessing as mp, sys\n"
        "def probe(path):\n"
        "    import torch, sandboxload\n"
        "    try:\n        torch.load(path)\n    except sandboxload.PickleRefusedError:\n"
        "        return 'refused'\n    return 'loaded'\n"
        "if __name__ == '__main__':\n"
        "    if sys.argv[1] == 'library':\n        import sandboxload; sandboxload.activate()\n"
        "    with mp.get_context('spawn').Pool(1) as pool:\n"
        f"        print(pool.apply(probe, ({str(checkpoints['zip'])!r},)))\n"
    )
    for how, env in (
        ("env", clean_env(SANDBOXLOAD="1", SANDBOXLOAD_PICKLE="refuse")),
        ("library", clean_env(SANDBOXLOAD_PICKLE="refuse")),
    ):
        proc = subprocess.run(
            [PY, str(script), how], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.stdout.strip() == "refused", (how, proc.stderr)


def test_a_failing_shadowed_sitecustomize_does_not_skip_activation(tmp_path: Path) -> None:
    """Found by an attack review: the site dir ran the ``sitecustomize`` it shadows, then
    activated; when that file raised, ``site`` printed the error and went on, unprotected.
    It still runs first, its error is still reported, and the process is active."""
    shadowed = tmp_path / "other"
    shadowed.mkdir()
    (shadowed / "sitecustomize.py").write_text("import definitely_not_installed_tracer\n")
    proc = run_py(STATE, env=clean_env(PYTHONPATH=os.pathsep.join([SITE_DIR, str(shadowed)])))
    assert json.loads(proc.stdout) is True, proc.stderr
    assert "definitely_not_installed_tracer" in proc.stderr  # the user's error, still shown
