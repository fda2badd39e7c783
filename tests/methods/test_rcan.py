"""RCAN baseline: training through Model.fit, model files and the command line."""

import pytest
import tifffile
from typer.testing import CliRunner

from hazematching.cli import app
from hazematching.io import write_tiff
from hazematching.nets import RCAN

TINY_RCAN = {"n_groups": 1, "n_blocks": 2, "n_feats": 8, "reduction": 4}


@pytest.fixture(scope="module")
def run(train_tiny):
    return train_tiny("rcan", **TINY_RCAN)


def test_uses_rcan_and_ignores_the_unet_config(run) -> None:
    assert isinstance(run.model.method.net, RCAN)
    assert run.model.method.options.loss == "l1"


def test_training_lowers_the_validation_loss(run) -> None:
    run.check_training_lowers_the_loss()


def test_save_load_gives_identical_deterministic_predictions(run) -> None:
    run.check_deterministic_round_trip()


def test_train_and_predict_from_the_command_line(method_config, paper_dataset, tmp_path) -> None:
    config = method_config("rcan", **TINY_RCAN).to_yaml(tmp_path / "tiny.yaml")
    assert "rcan" in config
    model_dir, out = tmp_path / "model", tmp_path / "pred"
    cli = CliRunner()
    res = cli.invoke(app, ["train", str(paper_dataset), "--out", str(model_dir), "--config",
                           str(tmp_path / "tiny.yaml"), "--epochs", "1",
                           "--set", "method_options.n_feats=4"])
    assert res.exit_code == 0, res.output
    widefield = tmp_path / "wf.tif"
    write_tiff(widefield, tifffile.imread(paper_dataset / "val" / "img0.tif")[1], "YX")
    res = cli.invoke(app, ["predict", str(model_dir), str(widefield), "--out", str(out),
                           "--device", "cpu"])
    assert res.exit_code == 0, res.output
    # Deterministic: no std file (dot files such as the folder's lock file aside).
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["wf_mmse.tif"]
    assert tifffile.imread(out / "wf_mmse.tif").shape == (48, 48)


def test_bad_option_fails_on_the_command_line(paper_dataset, tmp_path) -> None:
    res = CliRunner().invoke(app, ["train", str(paper_dataset), "--out", str(tmp_path / "m"),
                                   "--method", "rcan", "--set", "method_options.n_blocks=0"])
    assert res.exit_code == 2
    assert "n_blocks" in res.output
