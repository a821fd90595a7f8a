"""The rule for a command given nothing to check, shared by ``scan`` and ``pin``.

A gate that checked nothing must not pass: both say so on stderr and exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..modelfolder import WEIGHT_SUFFIXES

NOTHING_FOUND = 2


def no_weight_files(command: str, paths: Sequence[str]) -> int:
    """Say that ``paths`` hold no weight file; the exit status for that."""
    where = ", ".join(paths)
    suffixes = " ".join(f"*{s}" for s in WEIGHT_SUFFIXES)
    sys.stderr.write(
        f"sandboxload {command}: no weight files found under {where} (looked for {suffixes}); "
        "nothing was checked, so this is not a pass\n"
    )
    return NOTHING_FOUND
