"""Weight files that change under a running process.

torch's contract: ``torch.load(f)`` returns tensors that own their memory; ``mmap=True``
returns a mapping of the file. The sandbox route keeps it: without ``mmap=True`` the file is
read once into a sealed snapshot (the bytes that were sniffed and pinned) and the tensors are
built from that, so rewriting or truncating the file afterwards changes nothing and cannot
crash the process; with ``mmap=True`` the tensors map the file, as torch's do.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import torch

from sandboxload.errors import CorruptCheckpointError

from .helpers import PY, clean_env, run_py

REWRITE = """
import os, sys, torch
path, legacy = sys.argv[1], sys.argv[2] == "legacy"
want = {"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(7, dtype=torch.float64)}
torch.save(want, path, _use_new_zipfile_serialization=not legacy)
got = torch.load(path)
# What `cp new.bin pytorch_model.bin` does: truncate in place, then write other bytes.
with open(path, "r+b") as f:
    f.truncate(0)
    f.write(os.urandom(100))
ok = all(torch.equal(got[k], want[k]) for k in want)
print("kept" if ok else "changed")
"""


@pytest.mark.parametrize("form", ["zip", "legacy"])
def test_tensors_survive_the_file_being_rewritten(tmp_path: Path, form: str) -> None:
    proc = subprocess.run(
        [PY, "-c", REWRITE, str(tmp_path / "w.pt"), form],
        env=clean_env(SANDBOXLOAD="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Before: a SIGBUS (-7) when the mapped pages were read after the truncation.
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip() == "kept"


def _maps_of(path: Path) -> list[str]:
    inode = str(path.stat().st_ino)
    return [m for m in Path("/proc/self/maps").read_text().splitlines() if m.split()[4] == inode]


def test_only_mmap_true_maps_the_file(sandboxed: None, tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(1 << 16, dtype=torch.float32)}, path)
    owned = torch.load(path)
    assert _maps_of(path) == []  # tensors own their memory
    mapped = torch.load(path, mmap=True)
    ptr = mapped["w"].data_ptr()
    spans = [m.split()[0].split("-") for m in _maps_of(path)]
    assert any(int(a, 16) <= ptr < int(b, 16) for a, b in spans)
    assert torch.equal(owned["w"], mapped["w"])


@pytest.mark.parametrize("form", ["zip", "legacy"])
def test_a_file_written_during_the_load_is_refused(
    sandboxed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """A write between the sniff (and pin) and the end of the read: the bytes read might not
    be the bytes that were checked, so the load is refused."""
    from sandboxload.sandbox import client

    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=form == "zip")
    real = client.run

    def racing(*args: object, **kwargs: object) -> object:
        parsed = real(*args, **kwargs)
        with open(path, "ab") as f:  # someone appends while we read
            f.write(b"\0")
        return parsed

    monkeypatch.setattr(client, "run", racing)
    with pytest.raises(CorruptCheckpointError, match="changed while"):
        torch.load(path)
    monkeypatch.setattr(client, "run", real)
    assert torch.equal(torch.load(path)["w"], torch.ones(3))  # then it loads as written
    assert not _snapshots_open()
    assert _maps_of(path) == []  # the tensors own their memory; nothing maps the file


def _snapshots_open() -> list[str]:
    """sandboxload's memfds open in this process (a descriptor another thread closes while the
    directory is read is skipped, not an error)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("/memfd:sandboxload"):
                found.append(link)
    return found


SHARED_MAPPING_WRITE = """
import hashlib, mmap, os, torch, sandboxload
from sandboxload.fileid import identity
path, sums = {path!r}, {sums!r}
torch.save({{"w": torch.full((1024,), 1.0)}}, path)
raw = open(path, "rb").read()
with open(sums, "w") as f:
    f.write(hashlib.sha256(raw).hexdigest() + "  " + os.path.basename(path) + "\\n")
at = raw.find(torch.full((1024,), 1.0).numpy().tobytes())
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, len(raw), mmap.MAP_SHARED)
m[:] = raw  # every page dirty (same bytes): later writes to them change no timestamp
sandboxload.activate()
before = identity(fd)
print(float(torch.load(path)["w"][0]))
m[at : at + 4096] = torch.full((1024,), 666.0).numpy().tobytes()
print(identity(fd) == before)  # live: the file's identity cannot tell
try:
    print(float(torch.load(path)["w"][0]))
except sandboxload.SandboxLoadError as exc:
    print(type(exc).__name__)
"""


def test_a_pinned_file_written_through_a_shared_mapping_is_refused(tmp_path: Path) -> None:
    """Found by an attack review: a write through a shared mapping leaves size, mtime and
    ctime as they were, so a digest kept per identity would vouch for new bytes. The bytes
    a pinned load parses and holds are hashed themselves."""
    code = SHARED_MAPPING_WRITE.format(path=str(tmp_path / "m.bin"), sums=str(tmp_path / "S"))
    proc = run_py(code, env=clean_env(SANDBOXLOAD_MANIFEST=str(tmp_path / "S")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["1.0", "True", "HashMismatchError"]
