"""How the CLI shows things: tables for people, JSON for scripts, problems as sentences on standard error."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.table import Table

from stella.cli.api import ApiError

out = Console(soft_wrap=True)
"""Standard output."""

err = Console(stderr=True, soft_wrap=True)
"""Standard error."""


class Output(StrEnum):
    """What commands print."""

    TABLE = "table"
    JSON = "json"


def emit_json(value: Any) -> None:
    """Print ``value`` as JSON (unstyled, one document)."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def show(value: Any, output: Output, columns: Sequence[str], *, title: str | None = None) -> None:
    """Print one object or a list (a page's ``items``) as ``output`` says, with ``columns`` in a table."""
    if output == Output.JSON:
        emit_json(value)
        return
    rows = value.get("items", []) if isinstance(value, dict) and "items" in value else value
    if isinstance(rows, dict):
        table = Table(show_header=False, title=title, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key in columns:
            if key in rows:
                table.add_row(key, _cell(rows[key]))
        out.print(table)
        return
    table = Table(title=title)
    for key in columns:
        table.add_column(key)
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for key in columns))
    out.print(table)
    if isinstance(value, dict) and value.get("next_page_token"):
        err.print(f"[dim]more: --page-token {value['next_page_token']}[/dim]")


def problem(error: ApiError) -> None:
    """Explain an API error to a person, on standard error."""
    err.print(
        f"[bold red]Error:[/bold red] {error.title or 'the request failed'} [dim]({error.status} {error.code})[/dim]"
    )
    if error.detail:
        err.print(f"  {error.detail}")
    for item in error.errors:
        where = ".".join(str(part) for part in item.get("loc", []) if part not in ("body", "query", "path"))
        err.print(f"  - {where or 'request'}: {item.get('msg', '')}")
    if error.trace_id:
        err.print(f"  [dim]trace id: {error.trace_id} (quote it when reporting this)[/dim]")
