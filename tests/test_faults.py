"""Faults: the child killed from outside, the spare worker dead or stuck, a file truncated
mid-load, descriptors running out. Each is a typed error or a correct fallback, nothing
leaks, and the next load works."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import zipfile
from pathlib import Path

import psutil
import pytest
import torch

from sandboxload import pinning
from sandboxload.errors import (
    CorruptCheckpointError,
    SandboxCrashedError,
    SandboxLoadError,
    SandboxTimeoutError,
)
from sandboxload.sandbox import spare

from .attacks import torch_zip
from .helpers import clean_env, run_py, small

# Every test here runs with the defaults, activated in this process.
pytestmark = pytest.mark.usefixtures("sandboxed")


def loads(path: Path) -> bool:
    return torch.equal(torch.load(path)["w"], torch.arange(6.0))


def test_child_killed_from_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    # 30 million opcodes: a parse that lasts long enough to be killed in the middle.
    slow = tmp_path / "slow.pt"
    slow.write_bytes(
        torch_zip(b"\x80\x02" + b"N0" * 30_000_000 + b"N.", compress=zipfile.ZIP_DEFLATED)
    )
    monkeypatch.setenv("SANDBOXLOAD_SPARE", "off")  # a fresh worker, known by its arguments
    killed: list[int] = []
    done = threading.Event()

    def killer() -> None:
        while not done.is_set() and not killed:
            for child in psutil.Process().children():
                try:
                    if any(a.startswith("ckpt_fd=") for a in child.cmdline()):
                        child.kill()
                        killed.append(child.pid)
                except psutil.Error:  # gone, or not readable yet: look again
                    continue
            done.wait(0.005)

    watcher = threading.Thread(target=killer)
    watcher.start()
    try:
        with pytest.raises(SandboxCrashedError, match="killed by signal 9"):
            torch.load(slow)
    finally:
        done.set()
        watcher.join()
    assert killed
    assert loads(small(tmp_path))


def test_dead_spare_is_replaced(tmp_path: Path, no_leaks: None) -> None:
    path = small(tmp_path)
    assert loads(path)
    pid, _ = spare.settle()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):  # its zygote may have reaped it already
        psutil.Process(pid).wait(30)
    other = tmp_path / "other.pt"
    torch.save({"w": torch.arange(6.0)}, other)
    assert loads(other)  # a fresh worker, transparently


def test_stuck_spare_times_out_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    path = small(tmp_path)
    assert loads(path)
    pid, _ = spare.settle()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    monkeypatch.setenv("SANDBOXLOAD_TIMEOUT", "2")
    other = tmp_path / "other.pt"
    torch.save({"w": torch.arange(6.0)}, other)
    with pytest.raises(SandboxTimeoutError):
        torch.load(other)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert loads(other)


@pytest.mark.parametrize("mmap", [False, True])
def test_file_truncated_between_sniff_and_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mmap: bool, no_leaks: None
) -> None:
    path = tmp_path / "t.pt"
    torch.save({"w": torch.arange(1 << 14, dtype=torch.float32)}, path)
    real = pinning.check

    def truncating(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        os.truncate(path, 100)  # right after the file was sniffed and pinned
        return result

    monkeypatch.setattr(pinning, "check", truncating)
    with pytest.raises(CorruptCheckpointError):
        torch.load(path, mmap=mmap)
    monkeypatch.setattr(pinning, "check", real)
    assert loads(small(tmp_path))


LOW_FDS = """
import os, resource, torch, sandboxload
torch.save({"w": torch.arange(6.0)}, {path!r})
assert torch.equal(torch.load({path!r})["w"], torch.arange(6.0))
from sandboxload.sandbox import spare
spare.settle()
# Fill every hole below the highest descriptor in use, so the limit counts exactly.
highest = max(int(x) for x in os.listdir("/proc/self/fd"))
filler = []
while (fd := os.open("/dev/null", os.O_RDONLY)) < highest:
    filler.append(fd)
os.close(fd)
open_now = highest + 1
count_before = len(os.listdir("/proc/self/fd"))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
outcomes = []
from sandboxload.sandbox import load
for spare_fds in (1, 2, 3, 4, 6):
    load._kept.clear()  # a kept description needs no child: parse afresh each time
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + spare_fds, hard))
    try:
        ok = torch.equal(torch.load({path!r})["w"], torch.arange(6.0))
        outcomes.append("loaded" if ok else "WRONG")
    except sandboxload.SandboxLoadError as exc:
        outcomes.append(type(exc).__name__)
    except BaseException as exc:
        outcomes.append("UNTYPED " + repr(exc))
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    spare.settle()
# A spare started while the limit was low may have failed to start: this load parses in a
# worker again (nothing kept), so the next spare starts under the normal limit.
load._kept.clear()
assert torch.equal(torch.load({path!r})["w"], torch.arange(6.0))
spare.settle()
print(outcomes, len(os.listdir("/proc/self/fd")) - count_before)
"""


def test_descriptors_running_out(tmp_path: Path) -> None:
    code = LOW_FDS.replace("{path!r}", repr(str(tmp_path / "w.pt")))
    proc = run_py(code, env=clean_env(SANDBOXLOAD="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes, leaked = proc.stdout.strip().rsplit(" ", 1)
    assert "UNTYPED" not in outcomes and "WRONG" not in outcomes, outcomes
    assert "SandboxCrashedError" in outcomes  # the tightest limits do fail, typed
    assert int(leaked) == 0


def test_typed_errors_are_sandboxload_errors() -> None:
    assert issubclass(SandboxCrashedError, SandboxLoadError)


NO_MEMORY_FOR_THE_COPY = """
import io, os, resource, struct, torch, sandboxload
path = {path!r}
buf = io.BytesIO()
torch.save({{"w": torch.zeros(4)}}, buf)
raw = bytearray(buf.getvalue())
gap = 1 << 30  # a hole before the central directory: 1 GiB apparent, a few KB on disk
eocd = raw.rindex(b"PK\\x05\\x06")
cd_off = struct.unpack_from("<I", raw, eocd + 16)[0]
struct.pack_into("<I", raw, eocd + 16, cd_off + gap)
with open(path, "wb") as f:
    f.write(raw[:cd_off])
    f.seek(cd_off + gap)
    f.write(raw[cd_off:])
sandboxload.activate()
vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
try:
    torch.load(path)
    print("loaded")
except sandboxload.SandboxLoadError as exc:
    print(type(exc).__name__, path in str(exc))
"""


def test_no_memory_for_the_owned_copy_is_a_typed_error(tmp_path: Path) -> None:
    """Tensors that own their memory need the file's size of it; where the process cannot
    have that much the load fails typed, naming the file (found by an attack review: a bare
    OSError before)."""
    code = NO_MEMORY_FOR_THE_COPY.format(path=str(tmp_path / "gap.pt"))
    proc = run_py(code, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["SandboxCrashedError", "True"]
