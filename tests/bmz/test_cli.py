"""``hazematching export --bmz`` and ``hazematching import-bmz`` on real files."""

from __future__ import annotations

import json
import shutil

import numpy as np
from typer.testing import CliRunner

from hazematching import load_model
from hazematching.cli import app
from hazematching.io import write_tiff

runner = CliRunner()


def test_export_then_import(trained, widefield, tmp_path, files):
    pair = write_tiff(tmp_path / "pair.tif", np.stack([widefield * 0, widefield]), "CYX")
    pkg = tmp_path / "hm.zip"
    r = runner.invoke(app, ["export", str(trained.path), "--bmz", str(pkg), "--image", str(pair),
                            "--channel", "1", "--n-samples", "2", "--author", "A. Person",
                            "--name", "My dehazing model"])
    assert r.exit_code == 0, r.output
    assert f"wrote {pkg} (outputs: mmse, std)" in r.output and "note: The 'std'" in r.output
    d = files(pkg).rdf
    assert d["name"] == "My dehazing model" and d["authors"] == [{"name": "A. Person"}]
    assert files(pkg).npy("test_input.npy")[0, 0, 0, 0] == widefield[8, 8]

    r = runner.invoke(app, ["import-bmz", str(pkg), "--out", str(tmp_path / "restored")])
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "restored").calibration == trained.calibration

    r = runner.invoke(app, ["export", str(trained.path), "--bmz", str(pkg)])
    assert r.exit_code == 2 and "exists; pass overwrite=True" in r.output


def test_export_says_what_an_uncalibrated_or_deterministic_package_holds(trained, regression,
                                                                        tmp_path):
    uncalibrated = shutil.copytree(trained.path, tmp_path / "uncalibrated")
    meta = json.loads((uncalibrated / "model.json").read_text())
    (uncalibrated / "model.json").write_text(json.dumps({**meta, "calibration": None}))
    r = runner.invoke(app, ["export", str(uncalibrated), "--bmz", str(tmp_path / "u.zip"),
                            "--n-samples", "2"])
    assert r.exit_code == 0, r.output
    assert "warning: The model is not calibrated" in r.output

    r = runner.invoke(app, ["export", str(regression.path), "--bmz", str(tmp_path / "r.zip")])
    assert r.exit_code == 0, r.output
    assert "note: Method 'regression' is deterministic" in r.output
    assert "(outputs: mmse)" in r.output


def test_bad_input_exits_2_with_one_line(trained, tmp_path):
    newer = shutil.copytree(trained.path, tmp_path / "newer")
    meta = json.loads((newer / "model.json").read_text())
    (newer / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    cases = [
        (["export", str(newer), "--bmz", str(tmp_path / "n.zip")],
         "newer than this installation supports"),
        (["export", str(tmp_path / "nothing"), "--bmz", str(tmp_path / "x.zip")],
         "not a model directory or .zip archive"),
        (["import-bmz", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "m")],
         "no such BMZ package"),
        (["import-bmz", str(newer / "model.json"), "--out", str(tmp_path / "m")],
         "not a BMZ package"),
    ]
    for args, message in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and r.output.startswith("error:"), r.output
    assert not (tmp_path / "n.zip").exists() and not (tmp_path / "m").exists()
