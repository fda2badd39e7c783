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
    assert r.exit_code == 2 and "x.tif: no such file or folder" in r.output
    img = write_tiff(tmp_path / "x.tif", np.zeros((8, 8), np.uint16), "YX")
    r = runner.invoke(app, ["predict", str(tmp_path), str(img), "--out", str(tmp_path / "o")])
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


@pytest.mark.parametrize("args,message", [
    (["--max-steps", "-5"], "`max_steps` must be a non-negative integer or -1"),
    (["--accelerator", "foo"], "invalid accelerator name"),
    (["--devices", "0", "--accelerator", "cpu"], "devices=0"),
])
def test_invalid_training_options_fail_before_any_work(tmp_path, paper_dataset, args, message):
    out = tmp_path / "m"
    r = runner.invoke(app, ["train", str(paper_dataset), "--out", str(out), *args])
    assert r.exit_code == 2 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("device,message", [
    ("foo", "device 'foo' is not a device name"), ("cuda:99", "device 'cuda:99'")])
def test_invalid_devices_fail_before_any_work(tmp_path, device, message):
    img = write_tiff(tmp_path / "a.tif", np.zeros((8, 8), np.uint16), "YX")
    for command in (["predict", str(tmp_path), str(img), "--out", str(tmp_path / "o")],
                    ["calibrate", str(tmp_path), str(tmp_path)]):
        r = runner.invoke(app, [*command, "--device", device])
        assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_messages_with_brackets_are_printed_as_they_are(tmp_path):
    bad = tmp_path / "[red]odd.yaml"  # rich would take [red] for markup and drop it
    bad.write_text("- a list")
    r = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "m"), "--config",
                            str(bad)])
    assert r.exit_code == 2 and "[red]odd.yaml: expected a mapping of fields" in r.output
