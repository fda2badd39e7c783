"""The Python API on real files: predict arrays and files, calibrate, bad input."""

import numpy as np
import pytest
import tifffile
import torch
from helpers import make_pairs

from hazematching import HazeMatching, Model, ModelConfig, load_model
from hazematching import calibration as cal
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
    with pytest.raises(ValueError, match="calibration kind must be 'linear' or 'monotone'"):
        m.calibrate(make_pairs(2, seed=7), kind="isotonic")  # refused before any prediction
    rep = m.calibrate(make_pairs(2, seed=7), n_samples=4, n_bins=10, plot=tmp_path / "c.png")
    assert rep.calibration.a > 0 and rep.ence_after <= rep.ence_before + 1e-9
    # two pairs: each scored by the calibration fitted on the other
    assert rep.ence_heldout is not None and np.isfinite(rep.ence_heldout)
    assert (tmp_path / "c.png").exists()
    again = load_model(d)
    assert again.calibration == rep.calibration
    img = make_pairs(1, seed=3).inputs[0][0, 0]
    raw = Model(again.config, method=again.method, normalizer=again.normalizer)
    a = again.predict(img, n_samples=3).std
    b = raw.predict(img, n_samples=3).std
    # The default monotone map, applied in normalised units: σ_cal(σ / scale) · scale.
    scale = np.float32(m.normalizer.target.scale)
    assert rep.calibration.kind == "monotone"
    np.testing.assert_allclose(a, rep.calibration.apply(b / scale) * scale, rtol=1e-4,
                               atol=1e-3)
    linear = m.calibrate(make_pairs(2, seed=7), n_samples=4, n_bins=10, kind="linear",
                         save=False).calibration
    assert linear.kind == "linear" and (linear.a, linear.b) == (rep.calibration.a,
                                                              rep.calibration.b)


def test_a_calibration_knows_the_estimator_it_was_fitted_for(model, tmp_path):
    import shutil
    import warnings

    from hazematching.api import CalibrationMismatch

    d = tmp_path / "m"
    shutil.copytree(model.path, d, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    m = load_model(d)
    m.calibrate(make_pairs(2, seed=7), n_samples=4, n_bins=10)
    fitted = m.calibration.fitted_for
    assert fitted == {**m.config.sampling.estimator(), "n_samples": 4}
    assert load_model(d).calibration == m.calibration  # stored in model.json
    img = make_pairs(1, seed=3).inputs[0][0, 0]
    assert m.calibration_mismatch(4) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationMismatch)
        m.predict(img, n_samples=4)  # the settings of the fit: no warning
    with pytest.warns(CalibrationMismatch, match="fitted for n_samples 4, this prediction "
                                                  "uses n_samples 3"):
        m.predict(img, n_samples=3)
    m.reconfigure({"sampling.antithetic": True, "sampling.n_time_points": 3})
    why = m.calibration_mismatch(4)
    assert f"n_time_points {fitted['n_time_points']}, antithetic False" in why
    assert "uses n_time_points 3, antithetic True" in why and "hazematching calibrate" in why
    # a calibration from before the settings were recorded is taken as it is
    old = Model(m.config, method=m.method, normalizer=m.normalizer,
                calibration=cal.Calibration(m.calibration.a, m.calibration.b))
    assert old.calibration_mismatch(3) is None


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


def test_fit_calibrates_on_the_validation_images_by_default(model, tmp_path):
    import json

    from conftest import TINY

    # the module's model: trained on 3 images, validated (and so calibrated) on 2 others
    fit = json.loads((model.path / "model.json").read_text())["calibration_fit"]
    assert model.calibration is not None and (model.path / "calibration.png").is_file()
    assert fit["images"] == 2 and fit["n_samples"] == TINY["sampling"]["n_samples"]
    assert fit["ence_after"] <= fit["ence_before"] + 1e-9
    assert isinstance(fit["ence_heldout"], float)  # crops of the 2 validation images
    assert load_model(model.path).calibration == model.calibration
    # the budget crops the validation pixels; off when asked
    cfg = ModelConfig.from_dict(TINY).with_overrides({"training.epochs": 1,
                                                      "training.calibration_pixels": 1024})
    small = HazeMatching(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=tmp_path / "a")
    assert small.provenance["calibration_fit"]["pixels"] == 1024
    off = HazeMatching(cfg.with_overrides({"training.calibrate": False})).fit(
        make_pairs(3), make_pairs(2, seed=5), out_dir=tmp_path / "b")
    assert off.calibration is None and "calibration_fit" not in off.provenance
    assert not (tmp_path / "b" / "calibration.png").exists()


def test_progress_callback_follows_file_predictions_and_stops_them_leaving_no_file(model,
                                                                                   tmp_path):
    img = np.random.default_rng(4).uniform(300, 700, (2, 40, 40)).astype(np.uint16)
    src = write_tiff(tmp_path / "s.tif", img, "ZYX")
    calls = [0]
    hook = model.method.net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        seen = []
        model.predict_file(src, tmp_path / "full", n_samples=3, save_samples=True,
                           progress_callback=lambda d, t: seen.append((d, t)))
        done, totals = [d for d, _ in seen], {t for _, t in seen}
        assert len(totals) == 1 and done[0] == 0 and done[-1] == totals.pop() > 0
        assert all(a < b for a, b in zip(done, done[1:]))
        full, calls[0] = calls[0], 0

        def stop(d: int, t: int) -> None:
            if d > 0:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            model.predict_file(src, tmp_path / "stopped", n_samples=3, save_samples=True,
                               progress_callback=stop)
        assert 0 < calls[0] < full
        # no output, not even a partial one: the samples file is only renamed when complete
        assert [p.name for p in (tmp_path / "stopped").iterdir()] == [".hazematching.lock"]
    finally:
        hook.remove()
    # predict_files counts each input's work from 0
    starts = []
    list(model.predict_files([src, write_tiff(tmp_path / "t.tif", img, "ZYX")], tmp_path / "o",
                             n_samples=2, progress_callback=lambda d, t: starts.append(d == 0)))
    assert sum(starts) == 2


def test_fit_takes_lightning_callbacks_and_stopped_mid_epoch_it_can_resume(tmp_path):
    import lightning.pytorch as pl
    from conftest import TINY

    from hazematching.training import read_checkpoint

    class StopAtBatch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx + 1 == 2:
                trainer.should_stop = True

    cfg = ModelConfig.from_dict(TINY).with_overrides({"data.patches_per_epoch": 24,
                                                      "training.calibrate": False})
    out = tmp_path / "m"
    stopped = HazeMatching(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out,
                                    callbacks=[StopAtBatch()])
    assert stopped.training_summary["batches_per_epoch"] == 6  # 24 patches in batches of 4
    assert stopped.training_summary["steps"] == 2
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert load_model(out).provenance["steps"] == 2  # the model directory is complete
    # resumed from that step; Lightning counts the interrupted epoch as done
    resumed = HazeMatching(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out)
    assert resumed.training_summary["steps"] == 2 + 6


def test_initial_weights_follow_the_training_seed():
    from conftest import TINY

    def weights(seed: int) -> dict:
        torch.manual_seed(123 + seed)  # the global RNG plays no part
        cfg = ModelConfig.from_dict(TINY).with_overrides({"training.seed": seed})
        return {k: v.clone() for k, v in Model(cfg).method.state_dict().items()}

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _ngff(path):
    """The NGFF multiscale metadata and full-resolution array of an OME-Zarr output."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return group.attrs["multiscales"][0], group["0"]


def test_zarr_outputs_are_streamed_equal_to_in_memory_prediction_with_the_input_metadata(
        model, tmp_path):
    img = np.random.default_rng(3).uniform(300, 700, (2, 70, 45)).astype(np.float32)
    sizes = {"Z": 0.4, "Y": 0.08, "X": 0.08}
    src = write_tiff(tmp_path / "s.tif", img, "ZYX", pixel_sizes=sizes)
    in_memory = model.predict(img, "ZYX", n_samples=3, return_samples=True)
    zarr_out = model.predict_file(src, tmp_path / "z", n_samples=3, save_samples=True,
                                  output_format="zarr")
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == [
        ".hazematching.lock", "s_mmse.ome.zarr", "s_samples.ome.zarr", "s_std.ome.zarr"]
    for kind, expected in (("mmse", in_memory.mmse), ("std", in_memory.std),
                           ("samples", in_memory.samples)):
        meta, array = _ngff(zarr_out[kind])
        np.testing.assert_array_equal(array[:], expected)  # to the bit
        names = [a["name"] for a in meta["axes"]]
        assert names == (["sample"] if kind == "samples" else []) + ["z", "y", "x"]
        assert meta["datasets"][0]["coordinateTransformations"][0]["scale"][-3:] == \
            pytest.approx([0.4, 0.08, 0.08])
        assert array.chunks[-2:] == (70, 45) and array.chunks[:-2] == (1,) * (array.ndim - 2)
    # OME-Zarr in, TIFF out: the same prediction, the metadata carried over
    tiff_out = model.predict_file(zarr_out["mmse"], tmp_path / "t", n_samples=3)
    from hazematching.io import open_image

    with open_image(tiff_out["mmse"]) as image:
        assert image.axes == "ZYX" and image.pixel_sizes == pytest.approx(sizes, rel=1e-6)
    direct = model.predict(in_memory.mmse, "ZYX", n_samples=3)
    np.testing.assert_array_equal(tifffile.imread(tiff_out["mmse"]), direct.mmse)


def test_an_interrupted_zarr_folder_prediction_resumes(model, tmp_path):
    from hazematching.ngff import create_ome_zarr

    inputs = []
    for i, name in enumerate(("a", "b")):
        path = tmp_path / "in" / f"{name}.ome.zarr"
        path.mkdir(parents=True)
        create_ome_zarr(path, (40, 40), "YX")[:] = np.full((40, 40), 400.0 + 50 * i)
        inputs.append(path)
    out = tmp_path / "out"
    stale = out / ".b_mmse.ome.zarr.0000abcd.partial"  # a killed run's left-over
    (stale / "0").mkdir(parents=True)

    class Stop(Exception):
        pass

    starts = []

    def stop_in_b(done, total):  # stops the second input after its first batch
        starts.append(done == 0)
        if sum(starts) == 2 and done > 0:
            raise Stop

    with pytest.raises(Stop):
        for _ in model.predict_files(inputs, out, n_samples=2, output_format="zarr",
                                     progress_callback=stop_in_b):
            pass
    assert sorted(p.name for p in out.iterdir()) == [
        ".hazematching.lock", "a_mmse.ome.zarr", "a_std.ome.zarr"]  # b: nothing half-written
    a_chunks = {p: p.stat().st_mtime_ns for p in (out / "a_mmse.ome.zarr").rglob("*")}
    again = list(model.predict_files(inputs, out, n_samples=2, output_format="zarr"))
    assert [(r.source.name, r.skipped) for r in again] == [("a.ome.zarr", True),
                                                           ("b.ome.zarr", False)]
    assert {p: p.stat().st_mtime_ns for p in (out / "a_mmse.ome.zarr").rglob("*")} == a_chunks
    _, b = _ngff(out / "b_mmse.ome.zarr")
    np.testing.assert_array_equal(b[:], model.predict(np.full((40, 40), 450.0), n_samples=2).mmse)
    assert not list(out.glob(".*.partial"))


def test_a_paper_layout_pair_without_metadata_gives_its_channel(model, tmp_path):
    pair = np.random.default_rng(4).uniform(100, 900, (2, 40, 40)).astype(np.float32)
    tifffile.imwrite(tmp_path / "pair.tif", pair, metadata=None)  # read as ZYX by default
    written = model.predict_file(tmp_path / "pair.tif", tmp_path / "o", n_samples=2,
                                 channels=[1])
    np.testing.assert_array_equal(tifffile.imread(written["mmse"]),
                                  model.predict(pair[1], "YX", n_samples=2).mmse)
    # a file whose metadata say Z is not reinterpreted: the error says what to pass
    write_tiff(tmp_path / "stack.tif", pair, "ZYX")
    with pytest.raises(ValueError, match=r"stack.tif: channels=\[1\] given but the image has no "
                                         r"C axis \(axes 'ZYX' from the file's metadata.*"
                                         r"--axes CYX"):
        model.predict_file(tmp_path / "stack.tif", tmp_path / "o2", n_samples=2, channels=[1])
    assert not (tmp_path / "o2" / "stack_mmse.tif").exists()


@pytest.mark.parametrize("output_format", ["tiff", "zarr"])
def test_a_read_only_output_folder_is_refused_and_keeps_its_outputs(model, tmp_path,
                                                                    output_format):
    from helpers import read_only

    from hazematching.io import WriteError

    src = write_tiff(tmp_path / "a.tif", np.full((32, 32), 500, np.uint16), "YX")
    out = tmp_path / "out"
    first = model.predict_file(src, out, n_samples=2, output_format=output_format)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with read_only(out), pytest.raises(WriteError, match=f"{out}.*cannot (write|create)"):
        model.predict_file(src, out, n_samples=2, output_format=output_format, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert first["mmse"].exists()


def test_a_second_process_writing_the_same_outputs_is_refused(model, tmp_path):
    import subprocess
    import sys

    from hazematching.io import FolderInUseError

    src = write_tiff(tmp_path / "a.tif", np.full((32, 32), 500, np.uint16), "YX")
    out = tmp_path / "out"
    holder = subprocess.Popen(  # another prediction holding the output folder
        [sys.executable, "-c", "import sys\nfrom hazematching.io import folder_lock\n"
         "with folder_lock(sys.argv[1], 'predictions'):\n    print('held', flush=True)\n"
         "    sys.stdin.read()\n", str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"{out} is in use by another hazematching"):
            model.predict_file(src, out, n_samples=2, output_format="zarr")
        assert sorted(p.name for p in out.iterdir()) == [".hazematching.lock"]
    finally:
        holder.communicate("", timeout=60)
