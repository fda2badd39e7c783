"""The Python API on real files: predict arrays and files, calibrate, bad input."""

import numpy as np
import pytest
import tifffile
from helpers import make_pairs

from hazematching import HazeMatching, Model, ModelConfig, load_model
from hazematching.io import write_tiff


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from conftest import TINY

    cfg = ModelConfig.from_dict(TINY).with_overrides({"training.epochs": 1})
    return HazeMatching(cfg).fit(make_pairs(3), make_pairs(2, seed=5),
                                 out_dir=tmp_path_factory.mktemp("model"))


def test_hazematching_requires_its_method():
    with pytest.raises(ValueError, match="use Model"):
        HazeMatching(ModelConfig(method="test-identity"))
    with pytest.raises(RuntimeError, match="not trained"):
        HazeMatching().predict(np.zeros((32, 32)))


@pytest.mark.parametrize("axes,shape", [("YX", (40, 56)), ("ZYX", (2, 33, 40)),
                                        ("TYX", (3, 32, 32)), ("SYX", (2, 20, 20))])
def test_predict_keeps_axes(model, axes, shape):
    img = np.random.default_rng(0).uniform(300, 700, shape).astype(np.uint16)
    p = model.predict(img, axes, n_samples=3, return_samples=True)
    assert p.mmse.shape == shape and p.std.shape == shape and p.axes == axes
    assert p.samples.shape == (3, *shape)
    np.testing.assert_allclose(p.samples.mean(0), p.mmse, rtol=1e-4, atol=1e-2 * abs(
        p.mmse).max())


def test_predict_file_writes_outputs_next_to_each_other(model, tmp_path):
    img = np.random.default_rng(1).uniform(300, 700, (2, 40, 40)).astype(np.uint16)
    src = write_tiff(tmp_path / "stack.tif", img, "ZYX")
    out = model.predict_file(src, tmp_path / "pred", n_samples=3, save_samples=True)
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "stack_mmse.tif", "stack_samples.tif", "stack_std.tif"]
    mmse = tifffile.imread(out["mmse"])
    samples = tifffile.imread(out["samples"])
    assert mmse.shape == (2, 40, 40) and samples.shape == (3, 2, 40, 40)
    with tifffile.TiffFile(out["mmse"]) as t:
        assert t.is_imagej and t.series[0].axes == "ZYX"
    # samples file was streamed to disk; its mean is the MMSE up to stitching of the std
    np.testing.assert_allclose(samples.mean(0), mmse, rtol=1e-3, atol=1e-2 * abs(mmse).max())
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        model.predict_file(src, tmp_path / "pred", n_samples=2)
    before = (tmp_path / "pred" / "stack_mmse.tif").read_bytes()
    assert before == out["mmse"].read_bytes()
    # an output used as input gets its own suffix and stays untouched
    model.predict_file(out["mmse"], tmp_path / "pred", overwrite=True, n_samples=2)
    assert out["mmse"].read_bytes() == before
    assert (tmp_path / "pred" / "stack_mmse_mmse.tif").exists()
    assert not list((tmp_path / "pred").glob(".*partial"))


def test_calibrate_stores_factors(model, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model.path, d, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    m = load_model(d)
    rep = m.calibrate(make_pairs(2, seed=7), n_samples=4, n_bins=10, plot=tmp_path / "c.png")
    assert rep.calibration.a > 0 and rep.ence_after <= rep.ence_before + 1e-9
    assert (tmp_path / "c.png").exists()
    again = load_model(d)
    assert again.calibration == rep.calibration
    img = make_pairs(1, seed=3).inputs[0][0, 0]
    raw = Model(again.config, method=again.method, normalizer=again.normalizer)
    a = again.predict(img, n_samples=3).std
    b = raw.predict(img, n_samples=3).std
    np.testing.assert_allclose(a, np.maximum(rep.calibration.a * b + rep.calibration.b *
                                             m.normalizer.target.scale, 0), rtol=1e-4,
                               atol=1e-3)


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match="expects 1 input channel"):
        model.predict(np.zeros((2, 32, 32)), "CYX")


def test_reconfigure_keeps_weights_and_refuses_network_changes(model):
    import copy

    m = copy.deepcopy(model)
    before = {k: v.clone() for k, v in m.method.state_dict().items()}
    m.reconfigure({"sampling.n_time_points": 3, "sampling.solver": "heun"})
    assert m.config.sampling.solver == "heun" and m.method.config.sampling.n_time_points == 3
    assert all((before[k] == v).all() for k, v in m.method.state_dict().items())
    with pytest.raises(ValueError, match="alter the network"):
        m.reconfigure({"network.model_channels": 16})
    assert m.config.network.model_channels == 8
