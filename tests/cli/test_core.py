"""The command line on real files, through typer's CliRunner."""

import json

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
    # trained with calibration: fitted for the model's own sampling, not for 2 samples and Heun
    assert "warning: the std calibration was fitted for n_samples" in r.output
    assert "this prediction uses n_samples 2, solver heun, n_time_points 3" in r.output

    r = runner.invoke(app, ["calibrate", str(model), str(paper_dataset / "val"), "--n-samples",
                            "3", "--bins", "8"])
    assert r.exit_code == 0, r.output
    assert "ENCE" in r.output and (model / "calibration.png").exists()
    stored = json.loads((model / "model.json").read_text())["calibration"]
    assert "monotone through" in r.output and len(stored["knots"]) >= 2  # the default
    assert "on images held out of the fit (2-fold)" in r.output  # val holds 2 pairs
    r = runner.invoke(app, ["calibrate", str(model), str(paper_dataset / "val"), "--n-samples",
                            "3", "--bins", "8", "--calibrator", "linear"])
    assert r.exit_code == 0 and "monotone" not in r.output, r.output
    assert "knots" not in json.loads((model / "model.json").read_text())["calibration"]
    r = runner.invoke(app, ["calibrate", str(model), str(paper_dataset / "val"),
                            "--calibrator", "isotonic"])
    assert r.exit_code == 2 and "--calibrator must be 'linear' or 'monotone'" in r.output

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
    (["--max-minutes", "0"], "training.max_minutes: Input should be greater than 0"),
    (["--set", "training.lr_schedule=cos"], "training.lr_schedule: Input should be 'constant'"),
    (["--accelerator", "foo"], "invalid accelerator name"),
    (["--devices", "0", "--accelerator", "cpu"], "devices=0"),
])
def test_invalid_training_options_fail_before_any_work(tmp_path, paper_dataset, args, message):
    out = tmp_path / "m"
    r = runner.invoke(app, ["train", str(paper_dataset), "--out", str(out), *args])
    assert r.exit_code == 2 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) <= 2 and not out.exists()  # no traceback


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


@pytest.mark.parametrize("args,message", [
    (["--num-nodes", "2"], "give devices too (CLI: --devices N"),
    (["--device", "cpu", "--devices", "2"], "device='cpu' is the one device of a single"),
    (["--devices", "2", "--accelerator", "foo"], "invalid accelerator name"),
])
def test_invalid_distribution_options_fail_before_any_work(tmp_path, args, message):
    from conftest import TINY
    from helpers import make_pairs

    from hazematching.config import ModelConfig
    from hazematching.data.normalization import Normalizer
    from hazematching.methods import build_method
    from hazematching.model_io import save_model

    pairs = make_pairs(2)
    model = save_model(tmp_path / "m", build_method(ModelConfig.from_dict(TINY)),
                       Normalizer.fit(pairs.targets, pairs.inputs))
    img = write_tiff(tmp_path / "a.tif", np.zeros((32, 32), np.uint16), "YX")
    r = runner.invoke(app, ["predict", str(model), str(img), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.fixture
def untrained_model(tmp_path):
    from conftest import TINY
    from helpers import make_pairs

    from hazematching.config import ModelConfig
    from hazematching.data.normalization import Normalizer
    from hazematching.methods import build_method
    from hazematching.model_io import save_model

    pairs = make_pairs(2)
    return save_model(tmp_path / "model", build_method(ModelConfig.from_dict(TINY)),
                      Normalizer.fit(pairs.targets, pairs.inputs))


def test_predict_reads_and_writes_ome_zarr(tmp_path, untrained_model):
    import zarr

    from hazematching.ngff import create_ome_zarr

    (tmp_path / "in" / "a.ome.zarr").mkdir(parents=True)
    create_ome_zarr(tmp_path / "in" / "a.ome.zarr", (2, 40, 36), "ZYX",
                    {"Z": 1.0, "Y": 0.1, "X": 0.1})[:] = 500.0
    write_tiff(tmp_path / "in" / "b.tif", np.full((40, 36), 500, np.uint16), "YX",
               pixel_size_um=0.2)
    args = ["predict", str(untrained_model), str(tmp_path / "in"), "--n-samples", "2"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "o"), "--format", "zarr"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").glob("*.zarr")) == [
        "a_mmse.ome.zarr", "a_std.ome.zarr", "b_mmse.ome.zarr", "b_std.ome.zarr"]
    b = zarr.open_group(str(tmp_path / "o" / "b_mmse.ome.zarr"), mode="r")
    assert b.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0][
        "scale"] == pytest.approx([0.2, 0.2])
    # one input and an .ome.zarr path: the outputs are named after it
    r = runner.invoke(app, ["predict", str(untrained_model), str(tmp_path / "in" / "a.ome.zarr"),
                            "--n-samples", "2", "--out", str(tmp_path / "p" / "res.ome.zarr")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "p").glob("*.zarr")) == [
        "res_mmse.ome.zarr", "res_std.ome.zarr"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "q" / "res.ome.zarr")])
    assert r.exit_code == 2 and "names the outputs of one image, but 2 inputs" in r.output
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "q"), "--format", "png"])
    assert r.exit_code == 2 and "--format must be tiff or zarr, got 'png'" in r.output
    (tmp_path / "in" / "c.zarr").mkdir()  # neither a zarr array nor a group
    r = runner.invoke(app, ["predict", str(untrained_model), str(tmp_path / "in" / "c.zarr"),
                            "--out", str(tmp_path / "q")])
    assert r.exit_code == 2 and "c.zarr: is neither a zarr array nor a zarr group" in r.output
    assert not (tmp_path / "q").exists() or not list((tmp_path / "q").glob("*.zarr"))


def test_a_paper_layout_pair_without_metadata_takes_channel_1(tmp_path, untrained_model):
    pair = np.random.default_rng(5).uniform(100, 900, (2, 40, 40)).astype(np.float32)
    tifffile.imwrite(tmp_path / "pair.tif", pair, metadata=None)
    r = runner.invoke(app, ["predict", str(untrained_model), str(tmp_path / "pair.tif"),
                            "--out", str(tmp_path / "o"), "--n-samples", "2", "--channel", "1"])
    assert r.exit_code == 0, r.output
    assert tifffile.imread(tmp_path / "o" / "pair_mmse.tif").shape == (40, 40)
