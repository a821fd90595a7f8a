"""What every target shares: seed a corpus folder from real files, then hand over to atheris."""

import os
import sys
import tempfile
from collections.abc import Callable, Iterable

import atheris


def fuzz(test_one: Callable[[bytes], None], seeds: Iterable[bytes]) -> None:
    """libFuzzer takes corpus folders as arguments: one, seeded, is added to the command's."""
    corpus = tempfile.mkdtemp(prefix="sandboxload-fuzz-")
    for i, seed in enumerate(seeds):
        with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
            f.write(seed)
    atheris.Setup([*sys.argv, corpus], test_one)
    atheris.Fuzz()
