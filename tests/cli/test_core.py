"""The command line on real files, through typer's CliRunner."""

import numpy as np
import pytest
import tifffile
import yaml
from typer.testing import CliRunner

from hazematching.cli import app
from hazematching.io import write_tiff

runner = CliRunner()


@pytest.fixture
def config_file(tmp_path):
    from conftest import TINY

    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({**TINY, "training": {**TINY["training"], "epochs": 1}}))
    return p


def test_train_predict_calibrate(tmp_path, paper_dataset, config_file):
    model = tmp_path / "model"
    r = runner.invoke(app, ["train", str(paper_dataset), "--out", str(model), "--config",
                            str(config_file), "--set", "training.seed=3"])
    assert r.exit_code == 0, r.output
    assert (model / "model.json").exists()
    assert yaml.safe_load((model / "config.yaml").read_text())["training"]["seed"] == 3

    img = write_tiff(tmp_path / "in" / "a.tif",
                     np.random.default_rng(0).uniform(300, 600, (40, 52)).astype(np.uint16), "YX")
    r = runner.invoke(app, ["predict", str(model), str(img.parent), "--out", str(tmp_path / "o"),
                            "--n-samples", "2", "--solver", "heun", "--n-time-points", "3"])
    assert r.exit_code == 0, r.output
    assert tifffile.imread(tmp_path / "o" / "a_mmse.tif").shape == (40, 52)
    assert tifffile.imread(tmp_path / "o" / "a_std.tif").shape == (40, 52)

    r = runner.invoke(app, ["calibrate", str(model), str(paper_dataset / "val"), "--n-samples",
                            "3", "--bins", "8"])
    assert r.exit_code == 0, r.output
    assert "ENCE" in r.output and (model / "calibration.png").exists()

    again = runner.invoke(app, ["train", str(paper_dataset), "--out", str(model), "--config",
                                str(config_file)])
    assert again.exit_code == 0  # resumes: max_epochs already reached, nothing lost
    assert (model / "model.json").exists()


def test_errors_are_clear(tmp_path, paper_dataset):
    r = runner.invoke(app, ["train", str(paper_dataset), "--out", str(tmp_path / "m"), "--set",
                            "data.patch_size=100"])
    assert r.exit_code == 2 and "data.patch_size=100 must be divisible" in r.output
    r = runner.invoke(app, ["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "nowhere: no such folder" in r.output
    (tmp_path / "emptyset" / "train").mkdir(parents=True)
    r = runner.invoke(app, ["train", str(tmp_path / "emptyset"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "contains no TIFF files" in r.output
    r = runner.invoke(app, ["predict", str(tmp_path), "x.tif", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a finished hazematching model" in r.output
    r = runner.invoke(app, ["train", str(paper_dataset), "--out", str(tmp_path / "m"), "--set",
                            "epochs"])
    assert r.exit_code == 2 and "--set expects KEY=VALUE" in r.output


def test_config_command(tmp_path):
    p = tmp_path / "c.yaml"
    assert runner.invoke(app, ["config", str(p)]).exit_code == 0
    assert yaml.safe_load(p.read_text())["network"]["model_channels"] == 32
    r = runner.invoke(app, ["config", str(p)])
    assert r.exit_code == 2 and "exists" in r.output
