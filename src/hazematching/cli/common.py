"""Pieces every command shares: the error path and the console."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

#: stderr console for messages; soft wrap keeps file paths in errors on one line.
console = Console(stderr=True, soft_wrap=True)

#: Errors that are the user's to fix: printed as one line, exit status 2, no traceback.
USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, ImportError, OSError)


def fail(message: str) -> NoReturn:
    """Print ``error: message`` and exit with status 2."""
    console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code=2)
