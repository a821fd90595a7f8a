"""``python -m sandboxload``: the wrapper and its subcommands (:mod:`sandboxload.cli`)."""

import os
import sys

# ``-m`` put the working directory first on sys.path: run from inside a model folder, a
# ``numpy.py`` there would be imported by convert or scan (the console script ``sandboxload``
# has no such entry, nor has the program the wrapper runs).
if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from sandboxload.cli import main  # after the path is cleaned

raise SystemExit(main())
