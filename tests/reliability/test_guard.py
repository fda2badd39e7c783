"""The command line's crash guard: an error no command foresaw (here: a method with a bug)
gives one line naming the command, the input and a log file holding the traceback."""

from __future__ import annotations

import numpy as np
from conftest import TINY
from helpers import make_pairs, write_paper_layout
from typer.testing import CliRunner

from hazematching.cli import app
from hazematching.config import ModelConfig
from hazematching.data.normalization import Normalizer
from hazematching.io import write_tiff
from hazematching.methods import build_method, register
from hazematching.methods.base import Method
from hazematching.model_io import save_model

runner = CliRunner()


@register
class FailingMethod(Method):
    """A stochastic method with a bug: every prediction raises an error nobody expects."""

    name = "test-failing"
    stochastic = True
    trainable = False

    def predict_batch(self, cond, generator=None):
        raise ZeroDivisionError("a bug in the method")


def _failing_model(folder):
    pairs = make_pairs(2)
    config = ModelConfig.from_dict({**TINY, "method": "test-failing"})
    return save_model(folder, build_method(config), Normalizer.fit(pairs.targets, pairs.inputs))


def _error_lines(output):
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_unexpected_error_is_one_line_and_a_log_in_the_output_folder(tmp_path):
    model = _failing_model(tmp_path / "model")
    inputs = tmp_path / "in"
    for name in ("a", "b"):
        write_tiff(inputs / f"{name}.tif", np.ones((32, 32), np.uint16), "YX")
    out = tmp_path / "out"
    r = runner.invoke(app, ["predict", str(model), str(inputs), "--out", str(out)])
    assert r.exit_code == 1
    log = next(out.glob("hazematching-predict-error-*.log"))
    expected = (f"error: hazematching predict failed unexpectedly on {inputs / 'a.tif'}: "
                f"ZeroDivisionError: a bug in the method; the full traceback is in {log} "
                f"(please report it)")
    assert _error_lines(r.output) == [expected]
    assert "Traceback" not in r.output
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in predict_batch" in text
    assert "while processing" in text

    debug = runner.invoke(app, ["predict", str(model), str(inputs), "--out", str(out),
                                "--overwrite"], env={"HAZEMATCHING_DEBUG": "1"})
    assert isinstance(debug.exception, ZeroDivisionError)


def test_without_an_output_folder_the_log_goes_to_the_cache(tmp_path):
    model = _failing_model(tmp_path / "model")
    val = write_paper_layout(tmp_path / "val", make_pairs(2))
    cache = tmp_path / "cache"
    r = runner.invoke(app, ["calibrate", str(model), str(val), "--n-samples", "2"],
                      env={"HAZEMATCHING_CACHE": str(cache)})
    assert r.exit_code == 1
    log = next((cache / "logs").glob("hazematching-calibrate-error-*.log"))
    (line,) = _error_lines(r.output)
    assert f"calibrate failed unexpectedly on {model}, {val}: ZeroDivisionError" in line
    assert str(log) in line


def test_every_command_is_guarded():
    def commands(typer_app):
        for info in typer_app.registered_commands:
            yield info.callback
        for group in typer_app.registered_groups:
            yield from commands(group.typer_instance)

    callbacks = list(commands(app))
    assert len(callbacks) >= 12
    assert all(hasattr(cb, "__wrapped__") for cb in callbacks)
