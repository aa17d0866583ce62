"""Output: a verb's result as a table (the default) or as json, json-line or yaml."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from meshscale.control.cli.protoshape import go_json

OUTPUT_FORMATS: Final = ("table", "json", "json-line", "yaml")

# A table column: its heading, and how a row (a JSON object of the REST API) shows in it.
Column = tuple[str, Callable[[dict[str, Any]], str]]


def when(value: str | None) -> str:
    """An RFC 3339 time as ``YYYY-MM-DD HH:MM:SS`` UTC ("" for none)."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def expired(value: str | None) -> bool:
    if not value:
        return False
    try:
        return datetime.fromisoformat(value) <= datetime.now(UTC)
    except ValueError:
        return False


def yes(value: object) -> str:
    return "yes" if value else "no"


class Output:
    """Prints results in the chosen format."""

    def __init__(self, fmt: str, out: TextIO | None = None) -> None:
        self.fmt = fmt
        self.out = out or sys.stdout

    def data(self, payload: Any) -> bool:
        """Print ``payload`` in a machine format; False in table mode (caller prints)."""
        if self.fmt in ("json", "json-line", "yaml"):
            payload = go_json(payload)
        if self.fmt == "json":
            self.out.write(json.dumps(payload, indent="\t") + "\n")
        elif self.fmt == "json-line":
            self.out.write(json.dumps(payload, separators=(",", ":")) + "\n")
        elif self.fmt == "yaml":
            import yaml  # here, like rich below: `version` and `--help` need neither

            self.out.write(yaml.safe_dump(payload, sort_keys=False))
        else:
            return False
        return True

    def table(self, payload: Any, rows: Sequence[dict[str, Any]], columns: list[Column]) -> None:
        # Machine formats print the list itself, as Headscale's CLI does.
        if self.data(list(rows)):
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        for name, _ in columns:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*(str(get(row)) for _, get in columns))
        Console(file=self.out, width=200, no_color=not self.out.isatty()).print(table)

    def error(self, text: str) -> bool:
        """Print an error as Headscale does under a machine format; False in table mode."""
        return self.data({"error": text})

    def message(self, payload: Any, text: str) -> None:
        # Machine formats print the object itself ({"user": {...}} -> {...}).
        if isinstance(payload, dict) and len(payload) == 1:
            payload = next(iter(payload.values()))
        if not self.data(payload):
            self.out.write(text + "\n")
