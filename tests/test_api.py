"""The Python API on real files: predict arrays and files, calibrate, bad input."""

import numpy as np
import pytest
import tifffile
from helpers import make_pairs

from hazematching import HazeMatching, Model, ModelConfig, load_model
from hazematching.api import check_device
from hazematching.io import ImageError, write_tiff


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
        ".hazematching.lock", "stack_mmse.tif", "stack_samples.tif", "stack_std.tif"]
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


def test_arrays_and_files_take_the_same_prediction_path(model, tmp_path):
    img = np.random.default_rng(2).uniform(300, 700, (2, 40, 36)).astype(np.uint16)
    src = write_tiff(tmp_path / "s.tif", img, "ZYX")
    from_array = model.predict(img, "ZYX", n_samples=3, return_samples=True)
    written = model.predict_file(src, tmp_path / "o", n_samples=3, save_samples=True)
    np.testing.assert_array_equal(tifffile.imread(written["mmse"]), from_array.mmse)
    np.testing.assert_array_equal(tifffile.imread(written["std"]), from_array.std)
    np.testing.assert_array_equal(tifffile.imread(written["samples"]), from_array.samples)


def test_one_sample_has_no_std(model, tmp_path):
    img = np.full((32, 32), 500, np.uint16)
    assert model.predict(img, n_samples=1).std is None
    src = write_tiff(tmp_path / "one.tif", img, "YX")
    assert list(model.output_paths(src, tmp_path, n_samples=1)) == ["mmse"]
    written = model.predict_file(src, tmp_path / "o", n_samples=1, save_samples=True)
    assert sorted(written) == ["mmse", "samples"]
    assert tifffile.imread(written["samples"]).shape == (32, 32)  # one sample (squeezed)
    with pytest.raises(ValueError, match="at least 2 posterior samples per pixel, got "
                                         "n_samples=1"):
        model.calibrate(make_pairs(2), n_samples=1, save=False)
    with pytest.raises(ValueError, match="must be at least 1, got 0"):
        model.predict(img, n_samples=0)


def test_predict_files_resumes_and_checks_inputs_first(model, tmp_path):
    inputs = [write_tiff(tmp_path / "in" / f"{n}.tif", np.full((32, 32), 400, np.uint16), "YX")
              for n in ("a", "b")]
    out = tmp_path / "out"
    first = list(model.predict_files(inputs[:1], out, n_samples=2))
    assert [r.skipped for r in first] == [False]
    again = list(model.predict_files(inputs, out, n_samples=2))
    assert [(r.source.name, r.skipped) for r in again] == [("a.tif", True), ("b.tif", False)]
    (out / "b_std.tif").unlink()
    (out / ".b_std.tif.0000abcd.partial").write_bytes(b"half")  # a killed run's left-over
    with pytest.raises(FileExistsError, match=r"b_mmse.tif exists but b_std.tif does not"):
        list(model.predict_files(inputs, out, n_samples=2))
    (out / "b_mmse.tif").unlink()
    list(model.predict_files(inputs, out, n_samples=2))
    assert (out / "b_std.tif").exists() and not list(out.glob(".*.partial"))
    twin = write_tiff(tmp_path / "other" / "a.tif", np.zeros((32, 32), np.uint16), "YX")
    with pytest.raises(ValueError, match=r"would both be written as .*a_mmse.tif"):
        list(model.predict_files([inputs[0], twin], out))
    with pytest.raises(ImageError, match="missing.tif: no such file"):
        list(model.predict_files([*inputs, tmp_path / "missing.tif"], tmp_path / "new"))
    assert not (tmp_path / "new").exists()  # refused before anything was written


def test_multichannel_files_need_the_right_channels(model, tmp_path):
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.full((32, 32, 3), 120, np.uint8), photometric="rgb")
    with pytest.raises(ImageError, match=r"rgb.tif: has 3 channel\(s\) \(axes CYX"):
        model.predict_file(rgb, tmp_path / "o", n_samples=2)
    written = model.predict_file(rgb, tmp_path / "o", n_samples=2, channels=[0])
    assert tifffile.imread(written["mmse"]).shape == (32, 32)


@pytest.mark.parametrize("device,message", [
    ("foo", "'foo' is not a device name"), ("cuda:99", "cuda:99"), ("meta", "unsupported")])
def test_devices_are_checked_before_any_work(model, device, message):
    with pytest.raises(ValueError, match=message):
        check_device(device)
    with pytest.raises(ValueError, match=message):
        model.predict(np.zeros((32, 32)), device=device)
