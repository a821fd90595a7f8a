"""``sandboxload.load``: the safe loader, usable without patching anything."""

from __future__ import annotations

import os
from typing import IO, Any

from . import loader


def load(f: str | os.PathLike[str] | IO[bytes], map_location: Any = None) -> Any:
    """Load a weight file under the current policy (safetensors, or pickle as the policy says).

    Takes what ``torch.load`` takes for ``f`` and ``map_location``; the caller cannot ask for
    in-process unpickling here, only the policy (``SANDBOXLOAD_PICKLE=allow``) can.
    """
    return loader.torch_load(
        f,
        map_location=map_location,
        pickle_module=None,
        weights_only=True,
        mmap=None,
        pickle_load_args={},
        api="sandboxload.load",
    )
