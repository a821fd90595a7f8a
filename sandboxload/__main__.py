"""``python -m sandboxload``: the wrapper and its subcommands (:mod:`sandboxload.cli`)."""

from sandboxload.cli import main

raise SystemExit(main())
