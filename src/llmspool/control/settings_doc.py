"""The settings reference, generated from :class:`~llmspool.shared.settings.Settings`."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from llmspool.shared.settings import Settings

_ENV_PREFIX = "LLMSPOOL_"


def _rows() -> list[tuple[str, str, str]]:
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else str(default).replace(str(Path.home()), "~")
        rows.append((_ENV_PREFIX + name.upper(), shown, field.description or ""))
    return rows


def settings_markdown() -> str:
    """docs/configuration.md's settings table."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{env}` | `{default}` | {text} |" for env, default, text in _rows()]
    return "\n".join(lines)


def settings_table(current: Settings) -> Table:
    table = Table("variable", "value", "meaning")
    for name, (env, _, text) in zip(Settings.model_fields, _rows(), strict=True):
        value = getattr(current, name)
        table.add_row(env, "unset" if value is None else str(value), text)
    return table
