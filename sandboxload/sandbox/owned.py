"""A weight file read into memory the tensors own (the route without ``mmap=True``).

torch.load without ``mmap`` reads each storage into fresh memory; its cost is mostly page
faults on that memory. Here the whole file is read into one anonymous private mapping, in
64 MiB positional reads spread over two threads (the faults of one run while the other
copies), while the child parses the file in parallel. No transparent huge pages are asked
for: with the common ``defrag=madvise`` setting a fragmented machine compacts memory on the
spot, and a 2 GB read measured 0.3 s one time and 4 s the next; 4 KiB pages cost the same
every time (measured: 500 MB in 130 ms, torch.load 330 ms; 2 GB in 0.5 s, torch 1.3 s).

The tensors are views of that mapping: a file rewritten or truncated afterwards changes
nothing and cannot SIGBUS the process, as a mapping of the file itself could. The mapping
is never closed by us; the last storage that views it releases it.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from typing import Any

import torch

from ..errors import CorruptCheckpointError, SandboxTimeoutError

CHUNK = 64 << 20
# Below this a second thread costs more than it saves.
PARALLEL_FROM = 2 * CHUNK


class OwnedCopy:
    """Starts reading ``size`` bytes of ``fd`` at once; :meth:`finish` waits for them (up to a
    deadline), :meth:`cancel` stops early."""

    def __init__(self, fd: int, size: int, name: str) -> None:
        self.name = name
        self.size = size
        self.failed: str | None = None
        self.cancelled = False  # set when the load fails: stop at the next chunk
        self.buf = mmap.mmap(-1, max(size, 1), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        n = 2 if size >= PARALLEL_FROM and (os.cpu_count() or 1) > 1 else 1
        self.threads = [
            threading.Thread(target=self._copy, args=(fd, k, n), daemon=True) for k in range(n)
        ]
        for t in self.threads:
            t.start()

    def _copy(self, fd: int, first: int, step: int) -> None:
        view = memoryview(self.buf)
        try:
            for chunk in range(first * CHUNK, self.size, step * CHUNK):
                if self.cancelled:
                    return
                pos, end = chunk, min(chunk + CHUNK, self.size)
                while pos < end:
                    n = os.preadv(fd, [view[pos:end]], pos)
                    if n == 0:
                        self.failed = "the file changed size while it was read"
                        return
                    pos += n
        except OSError as exc:
            self.failed = f"reading it failed: {exc.strerror or exc}"
        finally:
            view.release()

    def cancel(self) -> None:
        """Stop reading (each thread finishes the chunk it is in) and wait for that."""
        self.cancelled = True
        for t in self.threads:
            t.join()

    def finish(self, deadline: float, timeout: float) -> None:
        """Wait for the whole file, until ``deadline`` (``time.monotonic()``) at most."""
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.threads):
            self.cancel()
            raise SandboxTimeoutError(self.name, timeout)

    def storage(self) -> Any:
        """The whole file as one untyped storage over the owned memory (after :meth:`finish`)."""
        assert not any(t.is_alive() for t in self.threads)
        if self.cancelled:
            raise CorruptCheckpointError(self.name, "the read was cancelled")
        if self.failed is not None:
            raise CorruptCheckpointError(self.name, self.failed)
        if self.size == 0:
            return torch.UntypedStorage(0)
        # torch keeps a reference to the mapping for as long as any storage views it.
        return torch.frombuffer(self.buf, dtype=torch.uint8, count=self.size).untyped_storage()
