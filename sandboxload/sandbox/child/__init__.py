"""The confined side of the sandbox: what runs in the child process.

Every module here imports only the standard library, its siblings, and the wire contract
(:mod:`sandboxload.sandbox.protocol`); ``tests/test_architecture.py`` fails otherwise. The
child is started as ``python -I -S -B -c`` with the package root appended to ``sys.path`` and
runs :func:`worker.main`.
"""
