"""The plugin's logic without a viewer: presets, layer checks, result layers, the tasks."""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import make_pairs, write_paper_layout

from hazematching.api import Prediction, load_model
from hazematching.config import SAMPLING_PRESETS, ModelConfig, preset_overrides
from hazematching.napari.core import (
    PRESET_CHOICES,
    STD_COLORMAP,
    Cancelled,
    LayerSpec,
    PredictResult,
    Progress,
    TaskFailed,
    folder_training_pairs,
    guarded,
    layer_axes,
    layer_training_pairs,
    predict_task,
    result_layers,
    train_task,
    training_progress,
)
from hazematching.napari.sample_data import simulated_pair
from hazematching.training import read_checkpoint


def run(task: Generator[Progress, None, Any]) -> tuple[list[Progress], Any]:
    """Drive a task to its end as the worker thread does: its steps and its return value."""
    steps = []
    while True:
        try:
            steps.append(next(task))
        except StopIteration as stop:
            return steps, stop.value


def test_presets_are_the_librarys_plus_the_models_own(tiny_model_dir: Path) -> None:
    assert PRESET_CHOICES == (*SAMPLING_PRESETS, "model")
    image = make_pairs(1, size=40, seed=9).inputs[0][0, 0]
    for preset in SAMPLING_PRESETS:
        _, result = run(predict_task(tiny_model_dir, image, "YX", preset=preset, n_samples=2))
        assert result.sampling.items() >= SAMPLING_PRESETS[preset].items()
        assert result.preset == preset and result.n_samples == 2
    _, own = run(predict_task(tiny_model_dir, image, "YX", preset="model"))
    saved = load_model(tiny_model_dir).config.sampling
    assert own.sampling == saved.model_dump(mode="json") and own.n_samples == saved.n_samples
    with pytest.raises(ValueError, match="unknown sampling preset 'slow'"):
        run(predict_task(tiny_model_dir, image, "YX", preset="slow"))


def test_layer_axes_guesses_2d_and_3d_and_names_the_layer_when_it_cannot() -> None:
    assert layer_axes("a", (64, 64)) == "YX"
    assert layer_axes("a", (5, 64, 64)) == "ZYX"
    assert layer_axes("a", (5, 64, 64), "TYX") == "TYX"
    with pytest.raises(ValueError, match=r"layer 'cells' has 4 dimensions \(shape \(2, 3, 8, "
                                         r"8\)\); choose its axes, one of YX, ZYX"):
        layer_axes("cells", (2, 3, 8, 8))
    with pytest.raises(ValueError, match="layer 'cells': axes 'ZYX' name 3 dimensions but the "
                                         "image has 2"):
        layer_axes("cells", (8, 8), "ZYX")
    with pytest.raises(ValueError, match="layer 'photo' is RGB"):
        layer_axes("photo", (8, 8, 3), rgb=True)
    with pytest.raises(ValueError, match="layer 'big' is multiscale"):
        layer_axes("big", (8, 8), multiscale=True)


def test_predict_task_gives_what_model_predict_gives(tiny_model_dir: Path) -> None:
    image = make_pairs(1, size=40, seed=9).inputs[0][0, 0]
    steps, result = run(predict_task(tiny_model_dir, image, "YX", n_samples=3,
                                     return_samples=True))
    expected = load_model(tiny_model_dir).reconfigure(preset_overrides("fast")).predict(
        image, n_samples=3, return_samples=True)
    np.testing.assert_array_equal(result.prediction.mmse, expected.mmse)
    np.testing.assert_array_equal(result.prediction.std, expected.std)
    np.testing.assert_array_equal(result.prediction.samples, expected.samples)
    assert result.prediction.samples.shape == (3, 40, 40)
    assert steps[0].message.startswith("loading") and steps[-1] == Progress(1, 1, "done")
    assert result.calibrated and result.stochastic and result.method == "hazematching"


def test_predict_task_runs_a_stack_plane_by_plane_with_a_seed_per_plane(
        tiny_model_dir: Path) -> None:
    stack = np.stack([make_pairs(1, size=36, seed=s).inputs[0][0, 0] for s in range(3)])
    steps, result = run(predict_task(tiny_model_dir, stack, "ZYX", n_samples=2,
                                     return_samples=True))
    pred = result.prediction
    assert pred.mmse.shape == pred.std.shape == (3, 36, 36) and pred.axes == "ZYX"
    assert pred.samples.shape == (2, 3, 36, 36)
    # in work units: one tile a plane, 2 samples each, one network batch a plane
    assert [(s.done, s.total) for s in steps[1:]] == [(0, 6), (2, 6), (2, 6), (4, 6), (4, 6),
                                                      (6, 6), (1, 1)]
    assert steps[3].message == "plane 2/3: 2 sample(s)"
    model = load_model(tiny_model_dir).reconfigure(preset_overrides("fast"))
    seed = model.config.sampling.seed
    plane2 = model.reconfigure({"sampling.seed": seed + 2}).predict(stack[2], n_samples=2)
    np.testing.assert_array_equal(pred.mmse[2], plane2.mmse)
    np.testing.assert_array_equal(pred.std[2], plane2.std)


def test_result_layers_keep_geometry_and_metadata_without_the_channel_axis() -> None:
    rng = np.random.default_rng(0)
    pred = Prediction(mmse=rng.random((4, 8, 8)), std=rng.random((4, 8, 8)),
                      samples=rng.random((5, 4, 8, 8)), axes="ZYX")
    result = PredictResult(pred, "models/hm", "hazematching", 5, "fast", True, False,
                           {"n_samples": 5})
    source = LayerSpec(name="cells", scale=(2.0, 7.0, 0.5, 0.25),
                       translate=(1.0, 0.0, 3.0, 4.0), units=("µm", "pixel", "µm", "µm"),
                       axis_labels=("z", "c", "y", "x"), metadata={"origin": "scope"})
    samples, std, mmse = result_layers(result, source, "ZCYX")
    assert [t[1]["name"] for t in (samples, std, mmse)] == [
        "cells samples", "cells std (uncalibrated)", "cells MMSE"]
    assert all(t[2] == "image" for t in (samples, std, mmse))
    assert mmse[0] is pred.mmse and std[0] is pred.std and samples[0] is pred.samples
    assert mmse[1]["scale"] == std[1]["scale"] == (2.0, 0.5, 0.25)
    assert mmse[1]["translate"] == (1.0, 3.0, 4.0) and mmse[1]["axis_labels"] == ("z", "y", "x")
    assert samples[1]["scale"] == (1.0, 2.0, 0.5, 0.25)
    assert samples[1]["units"] == ("pixel", "µm", "µm", "µm")
    assert samples[1]["axis_labels"] == ("sample", "z", "y", "x")
    assert samples[1]["visible"] is False and std[1]["colormap"] == STD_COLORMAP
    assert "colormap" not in mmse[1]
    info = mmse[1]["metadata"]["hazematching"]
    assert mmse[1]["metadata"]["origin"] == "scope"
    assert info == {"model": "models/hm", "method": "hazematching", "axes": "ZYX",
                    "n_samples": 5, "preset": "fast", "sampling": {"n_samples": 5},
                    "calibrated": False, "source_layer": "cells"}
    assert samples[1]["metadata"]["hazematching"]["axes"] == "SZYX"


def test_result_layers_of_a_deterministic_method_are_one_prediction() -> None:
    pred = Prediction(mmse=np.zeros((8, 8)), std=None, samples=None, axes="YX")
    result = PredictResult(pred, "m", "regression", 1, "fast", False, False)
    (only,) = result_layers(result, LayerSpec("cells", (1.0, 1.0), (0.0, 0.0)), "YX")
    assert only[1]["name"] == "cells prediction" and "units" not in only[1]


def test_layer_training_pairs_hold_out_a_strip_of_the_longer_axis() -> None:
    rng = np.random.default_rng(0)
    target, widefield = rng.random((2, 3, 40, 100), dtype=np.float32)
    train, val = layer_training_pairs(target, widefield, "ZYX", patch_size=32)
    assert train.targets[0].shape == (3, 40, 68) and val.targets[0].shape == (3, 40, 32)
    assert train.inputs[0].shape == (3, 1, 40, 68) and val.inputs[0].shape == (3, 1, 40, 32)
    np.testing.assert_array_equal(np.concatenate([train.targets[0], val.targets[0]], -1), target)
    np.testing.assert_array_equal(np.concatenate([train.inputs[0], val.inputs[0]], -1)[:, 0],
                                  widefield)
    train, val = layer_training_pairs(target[0].T, widefield[0].T, "YX", patch_size=16,
                                      val_fraction=0.25)
    assert train.targets[0].shape == (1, 75, 40) and val.targets[0].shape == (1, 25, 40)


def test_layer_training_pairs_refuse_mismatched_or_small_layers() -> None:
    with pytest.raises(ValueError, match=r"layers 'cf' \(40, 40\) and 'wf' \(40, 41\) differ"):
        layer_training_pairs(np.zeros((40, 40)), np.zeros((40, 41)), "YX", patch_size=16,
                             names=("cf", "wf"))
    with pytest.raises(ValueError, match="layer 'cf' is 40×40 px: too small to hold out a "
                                         "32-px validation strip"):
        layer_training_pairs(np.zeros((40, 40)), np.zeros((40, 40)), "YX", patch_size=32,
                             names=("cf", "wf"))


def test_train_task_reports_every_batch_resumes_and_calibrates(
        tmp_path: Path, tiny_config_yaml: Path) -> None:
    config = ModelConfig.from_yaml(tiny_config_yaml).with_overrides({"data.patches_per_epoch": 8})
    pairs = make_pairs(1, size=96, seed=3)
    data = layer_training_pairs(pairs.targets[0][0], pairs.inputs[0][0, 0], "YX",
                                patch_size=config.data.patch_size)
    out = tmp_path / "model"
    steps, written = run(train_task(config, data, out, epochs=2))
    assert written == out
    # 8 patches a epoch in batches of 4: 2 batches an epoch
    assert [(s.done, s.total) for s in steps] == [(0, 0), (1, 4), (2, 4), (3, 4), (4, 4),
                                                  (1, 1), (0, 0)]
    assert steps[3].message == "epoch 2/2, batch 1/2"
    assert steps[-2].message == "trained 2 epoch(s), 4 step(s)"
    assert steps[-1].message.startswith("calibrating")
    model = load_model(out)
    assert model.calibration is not None and model.provenance["epochs"] == 2
    steps, _ = run(train_task(config, data, out, epochs=3, calibrate=False))
    assert [(s.done, s.total) for s in steps] == [(0, 0), (5, 6), (6, 6), (1, 1)]
    assert load_model(out).provenance["epochs"] == 3
    # Asking for fewer epochs than the folder has trained loads it and trains no more.
    steps, _ = run(train_task(config, data, out, epochs=2, calibrate=False))
    assert [s.message for s in steps] == ["preparing the training",
                                          "trained 3 epoch(s), 6 step(s)"]
    assert load_model(out).provenance["epochs"] == 3


def _no_helper_thread() -> bool:
    return not any(t.name.startswith("hazematching-task") for t in threading.enumerate())


def test_cancel_stops_a_prediction_within_one_image(tiny_model_dir: Path) -> None:
    image = make_pairs(1, size=40, seed=9).inputs[0][0, 0]
    cancel = threading.Event()
    steps = []
    with pytest.raises(Cancelled, match="^cancelled$"):  # and so no result, no layers
        for step in predict_task(tiny_model_dir, image, "YX", n_samples=40, cancel=cancel):
            steps.append(step)
            if 0 < step.done < step.total:
                cancel.set()
    # one tile, 40 samples in network batches of 8: it stopped after the first batch
    assert [(s.done, s.total) for s in steps[1:]] == [(0, 40), (8, 40)]
    assert _no_helper_thread()
    # Closing a task (as when its worker is dropped) cancels it and waits for its helper.
    cancel = threading.Event()
    task = predict_task(tiny_model_dir, image, "YX", n_samples=40, cancel=cancel)
    assert [next(task).done for _ in range(3)] == [0, 0, 8]
    task.close()
    assert cancel.is_set() and _no_helper_thread()


def test_cancel_stops_a_training_mid_epoch_and_keeps_a_resumable_model(
        tmp_path: Path, tiny_config_yaml: Path) -> None:
    config = ModelConfig.from_yaml(tiny_config_yaml).with_overrides(
        {"data.patches_per_epoch": 24})
    pairs = make_pairs(1, size=96, seed=3)
    data = layer_training_pairs(pairs.targets[0][0], pairs.inputs[0][0, 0], "YX",
                                patch_size=config.data.patch_size)
    out = tmp_path / "model"
    cancel, steps = threading.Event(), []
    message = (f"cancelled after training step 2; the model is saved in {out} (uncalibrated), "
               f"and training into that folder again continues from that step, with the next "
               f"epoch")
    with pytest.raises(Cancelled) as err:
        for step in train_task(config, data, out, epochs=3, cancel=cancel):
            steps.append(step)
            if step.message == "epoch 1/3, batch 2/6":
                cancel.set()
    assert str(err.value) == message
    assert steps[-1] == Progress(2, 18, "epoch 1/3, batch 2/6")  # 6 batches an epoch
    model = load_model(out)
    assert model.provenance["steps"] == 2 and model.calibration is None
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert _no_helper_thread()
    steps, _ = run(train_task(config, data, out, epochs=2, calibrate=False))
    assert steps[1] == Progress(7, 12, "epoch 2/2, batch 1/6")
    assert load_model(out).provenance["steps"] == 2 + 6


def test_training_progress_follows_the_tighter_budget() -> None:
    assert training_progress(1, 200, 5, 10, 30.0, 1.0) == Progress(
        30, 60, "epoch 1/200, batch 5/10, 0.5 of 1 min")
    assert training_progress(150, 200, 10, 10, 30.0, 1.0) == Progress(
        1500, 2000, "epoch 150/200, batch 10/10, 0.5 of 1 min")
    assert training_progress(3, 10, 2, 4, 999.0, None) == Progress(10, 40,
                                                                    "epoch 3/10, batch 2/4")


def test_folder_training_pairs_read_a_dataset_root_or_hold_out_images(
        tmp_path: Path, tiny_config_yaml: Path) -> None:
    config = ModelConfig.from_yaml(tiny_config_yaml)
    write_paper_layout(tmp_path / "root" / "train", make_pairs(3, seed=1))
    write_paper_layout(tmp_path / "root" / "val", make_pairs(1, seed=2))
    train, val = folder_training_pairs(tmp_path / "root", config)
    assert train.names == ["img0", "img1", "img2"] and val.names == ["img0"]
    write_paper_layout(tmp_path / "flat", make_pairs(4, seed=1))
    train, val = folder_training_pairs(tmp_path / "flat", config)
    assert len(train) == 3 and len(val) == 1 and not set(train.names) & set(val.names)
    with pytest.raises(ValueError, match="nothing: no such folder"):
        run(train_task(config, tmp_path / "nothing", tmp_path / "m", epochs=1))


def test_guarded_tasks_raise_their_message_as_task_failed() -> None:
    def failing(err: Exception) -> Generator[Progress, None, None]:
        yield Progress(0, 1, "working")
        raise err

    with pytest.raises(TaskFailed, match=r"^models/x: no such folder$"):
        run(guarded(failing(FileNotFoundError("models/x: no such folder"))))
    # RuntimeError would be dropped silently by superqt's generator worker: it must not escape.
    with pytest.raises(TaskFailed, match=r"^RuntimeError: CUDA out of memory$"):
        run(guarded(failing(RuntimeError("CUDA out of memory"))))


def test_sample_data_is_a_simulated_hazy_widefield_and_sharp_confocal_pair() -> None:
    (confocal, c_kw, c_type), (widefield, w_kw, w_type) = simulated_pair()
    assert c_type == w_type == "image"
    assert c_kw["name"] == "confocal (simulated)" and w_kw["name"] == "widefield (simulated)"
    assert confocal.shape == widefield.shape == (256, 256) and widefield.dtype == np.float32
    assert w_kw["scale"] == (0.1, 0.1) and w_kw["units"] == ("µm", "µm")
    assert w_kw["metadata"]["hazematching"]["simulation"]["size"] == 256
    # Out-of-focus light and background: the widefield image is brighter and flatter.
    assert widefield.mean() > confocal.mean()
    assert widefield.std() / widefield.mean() < confocal.std() / confocal.mean()
