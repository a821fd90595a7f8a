"""The child's three outcomes besides success; :mod:`worker` maps them to error kinds."""


class Refused(Exception):
    """A global outside the allowlist."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


class Malformed(Exception):
    """The checkpoint's structure is not what the format requires."""


class Unsupported(Exception):
    """A legitimate construct this loader does not rebuild (say which)."""


def need(cond: bool, what: str) -> None:
    if not cond:
        raise Malformed(what)
