"""Pieces every command shares: the error path, the crash guard and the console."""

from __future__ import annotations

import datetime
import functools
import inspect
import os
import platform
import sys
import tempfile
import traceback
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

#: stderr console for messages; soft wrap keeps file paths in errors on one line.
console = Console(stderr=True, soft_wrap=True)

#: Errors that are the user's to fix: printed as one line, exit status 2, no traceback.
USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, ImportError, OSError)

#: Exit status of a command that failed on an error not foreseen (a bug, or a broken install).
EXIT_UNEXPECTED = 1
#: Set this environment variable to 1 to get the raw traceback instead of the one-line summary.
DEBUG_ENV = "HAZEMATCHING_DEBUG"

#: Options that the training commands (`train`, `distill`) share.
ValOption = Annotated[Path | None, typer.Option(help="Validation folder.")]
EpochsOption = Annotated[int | None, typer.Option(help="Stop after this many epochs.")]
MaxStepsOption = Annotated[int | None, typer.Option(help="Stop after this many optimiser "
                                                         "steps.")]
MaxMinutesOption = Annotated[float | None, typer.Option(
    help="Stop after this much training time (minutes); the learning-rate schedule follows "
         "whichever budget ends first.")]
AcceleratorOption = Annotated[str | None, typer.Option(help="auto, cpu, gpu.")]
DevicesOption = Annotated[str | None, typer.Option(help="Number of devices or 'auto'.")]
ResumeOption = Annotated[bool, typer.Option(help="Continue from OUT/checkpoints/last.ckpt.")]

#: Start of an exception note naming the file being processed (see :func:`input_note`).
_INPUT_NOTE = "while processing "
F = TypeVar("F", bound=Callable[..., Any])


def _command_line_exceptions() -> tuple[type[BaseException], ...]:
    """Exit, Abort and usage errors of typer (which vendors click since 0.2x) and of click (which
    older typer versions use): these are how a command ends on purpose."""
    kinds: list[type[BaseException]] = [typer.Exit, typer.Abort]
    kinds += [k for k in [getattr(typer.exceptions, "TyperException", None)] if k is not None]
    try:
        import click
    except ImportError:
        return tuple(kinds)
    return (*kinds, click.ClickException, click.exceptions.Exit, click.exceptions.Abort)


_PASS_THROUGH = _command_line_exceptions()


def fail(message: str) -> NoReturn:
    """Print ``error: message`` and exit with status 2."""
    console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code=2)


def say(message: str) -> None:
    """Print a message (file names and all) exactly as given, without rich markup."""
    console.print(message, markup=False, highlight=False)


def _noted_input(error: BaseException) -> str | None:
    """The input named by the innermost ``while processing …`` note on `error`, if any (the
    API adds one per file, e.g. :meth:`hazematching.api.Model.predict_files`)."""
    notes = [n for n in getattr(error, "__notes__", []) if n.startswith(_INPUT_NOTE)]
    return notes[0].removeprefix(_INPUT_NOTE) if notes else None


def _argument_values(func: Callable[..., Any], bound: dict[str, Any]) -> str:
    """The command's positional arguments (its inputs), as given."""
    hints = typing.get_type_hints(func, include_extras=True)
    values = []
    for name, value in bound.items():
        meta = getattr(hints.get(name), "__metadata__", ())
        if value is not None and any(isinstance(m, typer.models.ArgumentInfo) for m in meta):
            values += [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    return ", ".join(values) or "(no input)"


def _crash_log(command: str, error: BaseException, out: object) -> Path | None:
    """Write the traceback to a log file: in `out` when the command has an output folder, else
    in the cache folder, else the system's temporary folder. None if none is writable."""
    from hazematching import __version__
    from hazematching.data.download import resolve_cache_dir

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"hazematching-{command.replace(' ', '-')}-error-{stamp}-{os.getpid()}.log"
    text = (f"command: {' '.join(sys.argv)}\nhazematching {__version__}, Python "
            f"{platform.python_version()}, {platform.platform()}\n\n"
            + "".join(traceback.format_exception(error)))
    folders = [Path(out)] if isinstance(out, str | Path) else []
    folders += [resolve_cache_dir() / "logs", Path(tempfile.gettempdir())]
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    return None


def guard(func: F, command: str) -> F:
    """Wrap a command so that an unexpected exception prints one line naming the command, its
    input and the log file holding the traceback, and exits with :data:`EXIT_UNEXPECTED`.

    User errors are handled inside each command (:func:`fail`, status 2); ``typer.Exit``,
    ``click`` usage errors and Ctrl-C pass through. With ``HAZEMATCHING_DEBUG=1`` the exception
    is raised as it is.
    """

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except Exception as err:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            bound = inspect.signature(func).bind_partial(*args, **kwargs).arguments
            subject = _noted_input(err) or _argument_values(func, bound)
            log = _crash_log(command, err, bound.get("out"))
            first = (str(err).splitlines() or [""])[0][:300]
            where = f"the full traceback is in {log}" if log else "no log file could be written"
            message = (f"hazematching {command} failed unexpectedly on {subject}: "
                       f"{type(err).__name__}: {first}; {where} (please report it)")
            console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
            raise typer.Exit(code=EXIT_UNEXPECTED) from None

    return typing.cast(F, guarded)


def guard_app(app: typer.Typer, prefix: str = "") -> None:
    """Apply :func:`guard` to every command of `app` and of its sub-apps (before it runs)."""
    for info in app.registered_commands:
        if info.callback is not None:
            name = info.name or info.callback.__name__.replace("_", "-")
            info.callback = guard(info.callback, f"{prefix}{name}")
    for group in app.registered_groups:
        if group.typer_instance is not None:
            guard_app(group.typer_instance, f"{prefix}{group.name} ")
