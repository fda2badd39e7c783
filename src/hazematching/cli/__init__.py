"""The ``hazematching`` command line: a thin typer layer over the Python API.

One module per group of commands; this file only assembles them and puts every command behind
the crash guard (:func:`hazematching.cli.common.guard`): no raw traceback reaches a user.
"""

from __future__ import annotations

import typer

from hazematching.cli.common import guard_app
from hazematching.cli.core import (
    benchmark,
    calibrate,
    demo,
    distill,
    predict,
    train,
    write_config,
)
from hazematching.cli.download import download_command, split_command
from hazematching.cli.evaluate import evaluate_command, report_command
from hazematching.cli.export import export_command, import_bmz_command
from hazematching.cli.simulate import simulate_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Dehaze widefield fluorescence microscopy images with calibrated "
                       "uncertainty (HazeMatching).")
app.command()(train)
app.command()(predict)
app.command()(calibrate)
app.command()(distill)
app.command("config")(write_config)
app.command()(demo)
app.add_typer(simulate_app, name="simulate")
app.command("download")(download_command)
app.command("split")(split_command)
app.command("evaluate")(evaluate_command)
app.command("report")(report_command)
app.command()(benchmark)
app.command("export")(export_command)
app.command("import-bmz")(import_bmz_command)
guard_app(app)  # last: a command registered after this line would run unguarded

__all__ = ["app"]
