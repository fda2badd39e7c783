"""The plugin's logic without a viewer: presets, layer checks, result layers, the tasks."""

from __future__ import annotations

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
    LayerSpec,
    PredictResult,
    Progress,
    TaskFailed,
    finished_epochs,
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
    assert [(s.done, s.total) for s in steps[1:]] == [(0, 3), (1, 3), (2, 3), (3, 3)]
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


def test_train_task_trains_epoch_by_epoch_resumes_and_calibrates(
        tmp_path: Path, tiny_config_yaml: Path) -> None:
    config = ModelConfig.from_yaml(tiny_config_yaml)
    pairs = make_pairs(1, size=96, seed=3)
    data = layer_training_pairs(pairs.targets[0][0], pairs.inputs[0][0, 0], "YX",
                                patch_size=config.data.patch_size)
    out = tmp_path / "model"
    steps, written = run(train_task(config, data, out, epochs=2))
    assert written == out
    assert [(s.done, s.total) for s in steps] == [(0, 2), (1, 2), (2, 2), (0, 0)]
    assert steps[-1].message.startswith("calibrating")
    model = load_model(out)
    assert model.calibration is not None and model.provenance["epochs"] == 2
    steps, _ = run(train_task(config, data, out, epochs=3, calibrate=False))
    assert [(s.done, s.total) for s in steps] == [(2, 3), (3, 3)]
    assert load_model(out).provenance["epochs"] == 3
    # Asking for fewer epochs than the folder has trained loads it and trains no more.
    steps, _ = run(train_task(config, data, out, epochs=2, calibrate=False))
    assert [(s.done, s.total) for s in steps] == [(2, 2), (2, 2)]
    assert steps[-1].message == "epoch 3/2"
    assert load_model(out).provenance["epochs"] == 3


def test_training_progress_follows_the_tighter_budget() -> None:
    assert training_progress(1, 200, 30.0, 1.0) == Progress(30, 60, "epoch 1/200, 0.5 of 1 min")
    assert training_progress(150, 200, 30.0, 1.0) == Progress(150, 200,
                                                               "epoch 150/200, 0.5 of 1 min")
    assert training_progress(3, 10, 999.0, None) == Progress(3, 10, "epoch 3/10")


def test_finished_epochs_reads_the_fit_loop_or_falls_back_to_the_epoch() -> None:
    progress = {"current": {"completed": 1, "processed": 2}}
    assert finished_epochs({"epoch": 1, "loops": {"fit_loop": {"epoch_progress": progress}}}) == 2
    assert finished_epochs({"epoch": 4}) == 4 and finished_epochs({}) == 0


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
