"""The sandbox: pickle checkpoints are parsed in a fresh, seccomp-confined child process.

``worker.py``, ``unpickler.py``, ``readers.py``, ``protocol.py`` and ``confine.py`` run in the
child, which imports only the standard library: they import each other as top-level modules
and nothing from ``sandboxload``. ``client.py`` and ``rebuild.py`` run in the parent.
"""
