"""The child's restricted unpickler: every global resolves through :mod:`allowlist`.

``find_class`` maps Python 2 names (as pickle itself does, without importing), then looks
the name up in the allowlist table; anything else raises :class:`errors.Refused`. The C
unpickler is used directly: ``pickle`` would also import ``re``, ``functools``...
"""

import _compat_pickle
import _pickle

from .allowlist import ALLOWED
from .errors import Malformed, Refused


class RestrictedUnpickler(_pickle.Unpickler):
    """pickle.Unpickler whose globals are stand-ins; nothing else resolves."""

    def __init__(self, file, persistent_load=None, extra=None) -> None:
        # torch.load decodes Python 2 strings as utf-8; so does this.
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent_load
        self._extra = extra or {}  # one reader's own names (READ_DCP's records)

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            pass
        try:
            return self._extra[(module, name)]
        except (KeyError, TypeError):
            raise Refused(str(module), str(name)) from None

    def persistent_load(self, pid: object) -> object:
        if self._persistent is None:
            raise Malformed("persistent id in a pickle that may not have any")
        return self._persistent(pid)
