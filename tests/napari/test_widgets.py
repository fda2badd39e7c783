"""The plugin in a real napari viewer: manifest, widgets, worker threads, layers, notifications.

napari's canvas needs OpenGL, which Qt's offscreen platform does not give; these tests run under
Xvfb (pytest-xvfb starts it when the ``Xvfb`` program is installed; ``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import make_pairs

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.notifications import Notification, notification_manager

from hazematching.api import load_model
from hazematching.napari.core import STD_COLORMAP
from hazematching.napari.widgets import PredictWidget, TrainWidget


def _qt_problem() -> str | None:
    """Why a Qt window cannot open here, or None. Qt aborts the process when its platform
    plugin lacks a system library, so it is tried in a subprocess first."""
    if not os.environ.get("DISPLAY"):
        return "no X display: install xvfb (pytest-xvfb then starts it)"
    code = "from qtpy.QtWidgets import QApplication; QApplication([])"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120, check=False)
    if probe.returncode != 0:
        return f"Qt cannot start (a system library missing? see .ci/run): {probe.stderr[-300:]}"
    return None


_PROBLEM = _qt_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))

WAIT_MS = 180_000


@pytest.fixture
def notifications() -> Iterator[list[Notification]]:
    seen: list[Notification] = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def dock(viewer, name: str):
    """Dock the plugin's widget `name` through its npe2 manifest."""
    _, widget = viewer.window.add_plugin_dock_widget("hazematching", name)
    return widget


def run_to_end(qtbot, widget) -> None:
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_manifest_gives_both_widgets_and_the_sample_pair(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    assert isinstance(dock(viewer, "Dehaze"), PredictWidget)
    train = dock(viewer, "Train")
    assert isinstance(train, TrainWidget)
    viewer.open_sample("hazematching", "simulated_pair")
    assert [layer.name for layer in viewer.layers] == ["confocal (simulated)",
                                                       "widefield (simulated)"]
    assert all(layer.data.shape == (256, 256) for layer in viewer.layers)
    np.testing.assert_allclose(viewer.layers[1].scale, (0.1, 0.1))
    # The layer choices follow the viewer's layers.
    assert [layer.name for layer in train.widefield.choices] == [
        "confocal (simulated)", "widefield (simulated)"]


def test_predict_widget_adds_mmse_std_and_samples_with_the_layers_geometry(
        make_napari_viewer, qtbot, tiny_model_dir: Path) -> None:
    viewer = make_napari_viewer()
    widget = dock(viewer, "Dehaze")
    stack = np.stack([make_pairs(1, size=40, seed=s).inputs[0][0, 0] for s in range(2)])
    viewer.add_image(stack, name="cells", scale=(2.0, 0.5, 0.25), translate=(0, 10, 20),
                     metadata={"origin": "scope"})
    widget.model_path.value = tiny_model_dir
    widget.image.value = viewer.layers["cells"]
    widget.n_samples.value = 3
    widget.keep_samples.value = True
    run_to_end(qtbot, widget)
    assert widget.status.value == "done: 3 sample(s), preset fast"
    assert [layer.name for layer in viewer.layers] == [
        "cells", "cells samples", "cells std", "cells MMSE"]
    _, samples, std, mmse = viewer.layers
    assert mmse.data.shape == std.data.shape == (2, 40, 40)
    assert samples.data.shape == (3, 2, 40, 40) and not samples.visible
    np.testing.assert_allclose(mmse.scale, (2.0, 0.5, 0.25))
    np.testing.assert_allclose(std.translate, (0, 10, 20))
    np.testing.assert_allclose(samples.scale, (1.0, 2.0, 0.5, 0.25))
    assert std.colormap.name == STD_COLORMAP and mmse.colormap.name == "gray"
    assert mmse.metadata["origin"] == "scope"
    assert mmse.metadata["hazematching"]["axes"] == "ZYX"
    assert mmse.metadata["hazematching"]["calibrated"] is True
    assert float(std.data.min()) > 0
    # A second run updates the result layers instead of adding more.
    run_to_end(qtbot, widget)
    assert len(viewer.layers) == 4 and widget.run_button.enabled


def test_cancel_stops_a_prediction_within_one_image(make_napari_viewer, qtbot,
                                                   tiny_model_dir: Path) -> None:
    viewer = make_napari_viewer()
    widget = dock(viewer, "Dehaze")
    viewer.add_image(np.random.default_rng(0).normal(500, 50, (40, 40)), name="image")
    widget.model_path.value = tiny_model_dir
    widget.image.value = viewer.layers["image"]
    widget.n_samples.value = 4000  # one tile: 500 network batches of 8 samples
    widget.run_button.native.click()
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    # The progress bar moves within the image while the worker runs: the viewer's event loop
    # is not blocked.
    qtbot.waitUntil(lambda: widget.progress.value >= 16, timeout=WAIT_MS)
    assert widget.progress.max == 4000
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value == "cancelled"
    assert widget.progress.value < 4000
    assert [layer.name for layer in viewer.layers] == ["image"]
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_bad_input_becomes_a_notification_with_the_clis_message(
        make_napari_viewer, qtbot, tmp_path: Path, notifications, tiny_model_dir: Path) -> None:
    viewer = make_napari_viewer()
    widget = dock(viewer, "Dehaze")
    viewer.add_image(np.zeros((2, 3, 16, 16)), name="hyper")
    widget.image.value = viewer.layers["hyper"]
    widget.run_button.native.click()
    assert str(notifications[-1].message) == "choose a model directory or .zip archive"
    widget.model_path.value = tiny_model_dir
    widget.run_button.native.click()
    assert widget.worker is None
    assert str(notifications[-1].message).startswith(
        "layer 'hyper' has 4 dimensions (shape (2, 3, 16, 16)); choose its axes")
    # An error inside the worker (here load_model's) arrives the same way.
    viewer.add_image(np.zeros((16, 16)), name="flat")
    widget.image.value = viewer.layers["flat"]
    widget.model_path.value = tmp_path / "missing"
    run_to_end(qtbot, widget)
    message = f"{tmp_path / 'missing'}: not a model directory or .zip archive (does it exist?)"
    assert str(notifications[-1].message) == message
    assert widget.status.value == f"error: {message}" and widget.run_button.enabled
    # A model directory written by a newer version.
    newer = tmp_path / "newer"
    shutil.copytree(tiny_model_dir, newer, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    meta = json.loads((newer / "model.json").read_text())
    (newer / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    widget.model_path.value = newer
    run_to_end(qtbot, widget)
    assert "is newer than this installation supports" in str(notifications[-1].message)
    assert [layer.name for layer in viewer.layers] == ["hyper", "flat"]


def test_train_widget_trains_on_the_sample_pair_and_cancels_mid_epoch(
        make_napari_viewer, qtbot, tmp_path: Path, tiny_config_yaml: Path) -> None:
    viewer = make_napari_viewer()
    widget = dock(viewer, "Train")
    viewer.open_sample("hazematching", "simulated_pair")
    widget.widefield.value = viewer.layers["widefield (simulated)"]
    widget.confocal.value = viewer.layers["confocal (simulated)"]
    widget.config.value = tiny_config_yaml
    widget.epochs.value = 1
    widget.minutes.value = 0
    widget.out_dir.value = tmp_path / "model"
    run_to_end(qtbot, widget)
    assert widget.status.value == f"model saved to {tmp_path / 'model'}"
    model = load_model(tmp_path / "model")
    assert model.calibration is not None and model.provenance["epochs"] == 1

    widget.out_dir.value = tmp_path / "long"
    widget.epochs.value = 200
    widget.calibrate.value = False
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.status.value.startswith("epoch 1/200, batch 1/"),
                    timeout=WAIT_MS)
    batches_per_epoch = widget.progress.max // 200
    assert batches_per_epoch > 2
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    steps = load_model(tmp_path / "long").provenance["steps"]
    assert 1 <= steps < batches_per_epoch  # stopped within the first epoch
    assert widget.status.value.startswith(f"cancelled after training step {steps}; the model "
                                          f"is saved in {tmp_path / 'long'} (uncalibrated)")


def test_training_next_to_napari_opengl_does_not_crash() -> None:
    """Mesa's OpenGL loads the system's LLVM, and triton's LLVM loaded after it segfaulted the
    viewer as soon as Lightning was imported; the plugin loads triton so that both coexist."""
    pytest.importorskip("triton")
    code = ("import napari, numpy as np; viewer = napari.Viewer(show=False); "
            "viewer.add_image(np.zeros((8, 8))); import hazematching.napari; "
            "import lightning.pytorch; print('alive')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("alive")
