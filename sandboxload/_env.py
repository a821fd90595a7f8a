"""Names of the switches read from the environment, and the one boolean vocabulary.

Imported by the start-up path, so it imports nothing.
"""

ACTIVATE_ENV = "SANDBOXLOAD"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def is_true(value: str | None) -> bool:
    """``1/true/yes/on`` (any case, surrounding blanks ignored) are true; anything else is not."""
    return value is not None and value.strip().lower() in TRUE_WORDS
