"""The settings table of ``docs/settings.md``, from the one declaration in :mod:`policy`
(``scripts/docs.py`` writes it; a test keeps the two equal)."""

from __future__ import annotations

from typing import Any

from ..policy import POLICY_FILE, SETTINGS


def markdown_table() -> str:
    """The settings table of ``docs/settings.md`` (a test keeps the two equal)."""
    rows = [
        "| setting (TOML key) | env variable | wrapper flag | default | what it does |",
        "|---|---|---|---|---|",
        f"| - | `{POLICY_FILE.env}` | `{POLICY_FILE.flag} {POLICY_FILE.metavar}` | unset | "
        f"{POLICY_FILE.help} |",
    ]
    for s in SETTINGS:
        default = _show(s.default)
        rows.append(
            f"| `{s.toml_key}` | `{s.env}` | `{s.flag} {s.metavar}` | {default} | {s.help} |"
        )
    return "\n".join(rows) + "\n"


def _show(value: Any) -> str:
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "`on`" if value else "`off`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"
