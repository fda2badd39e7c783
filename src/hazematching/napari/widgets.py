"""The dock widgets: thin magicgui/Qt forms over :mod:`hazematching.napari.core`.

Each widget runs one task at a time in a worker thread (napari's ``create_worker``), shows its
:class:`~hazematching.napari.core.Progress` in a progress bar and a status line, stops it on
Cancel through the task's cancel event (a prediction within one network batch, a training after
its current step), and reports errors as napari notifications with the CLI's messages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
    Widget,
)
from napari.layers import Image
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info

from hazematching.cli.common import USER_ERRORS
from hazematching.config import SAMPLING_PRESETS, ModelConfig
from hazematching.napari.core import (
    AXES_CHOICES,
    PRESET_CHOICES,
    Cancelled,
    LayerSpec,
    PredictResult,
    Progress,
    available_devices,
    guarded,
    layer_axes,
    layer_training_pairs,
    predict_task,
    result_layers,
    train_task,
    user_message,
)


class _TaskWidget(Container):
    """Fields, then Run/Cancel buttons, a progress bar and a status line for one task at a time.

    Subclasses build the task from their fields and the run's cancel event in :meth:`make_task`
    (raising ValueError & co. for bad input) and use its result in :meth:`on_result`.
    """

    def __init__(self, viewer: napari.viewer.Viewer, fields: list[Widget], run_text: str):
        self.viewer = viewer
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(min=0, max=1, value=0, label="progress")
        self.status = Label(value="")
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                            labels=False)
        super().__init__(widgets=[*fields, buttons, self.progress, self.status])
        #: The running task's worker, None when idle.
        self.worker: GeneratorWorker | None = None
        #: Set by Cancel; the running task checks it inside its long calls.
        self.cancel_event = threading.Event()
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)

    def make_task(self, cancel: threading.Event) -> Generator[Progress, None, Any]:
        raise NotImplementedError

    def on_result(self, result: Any) -> None:
        raise NotImplementedError

    def run(self) -> None:
        """Start the task (in a worker thread); bad input is reported and starts nothing."""
        if self.worker is not None:
            return
        self.cancel_event = threading.Event()
        try:
            task = self.make_task(self.cancel_event)
        except USER_ERRORS as err:
            self._fail(user_message(err))
            return
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.max, self.progress.value = 0, 0
        self.worker = create_worker(guarded, task, _start_thread=False, _connect={
            "yielded": self._show_progress, "returned": self._finish_result,
            "errored": self._errored, "finished": self._idle})
        self.worker.start()

    def cancel(self) -> None:
        """Stop the task: a prediction within one network batch (it adds no layers), a training
        after its current step (its model is saved and resumable)."""
        if self.worker is not None:
            self.cancel_event.set()
            self.cancel_button.enabled = False
            self.status.value = "cancelling after the current step…"

    def _show_progress(self, step: Progress) -> None:
        self.progress.max = step.total
        self.progress.value = step.done
        self.status.value = step.message

    def _finish_result(self, result: Any) -> None:
        try:
            self.on_result(result)
        except USER_ERRORS as err:
            self._fail(user_message(err))

    def _errored(self, err: Exception) -> None:
        if isinstance(err, Cancelled):
            self.status.value = str(err)  # the task says what it kept
        else:
            self._fail(str(err))

    def _fail(self, message: str) -> None:
        self.status.value = f"error: {message}"
        show_error(message)

    def _idle(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.progress.max = max(self.progress.max, 1)


class PredictWidget(_TaskWidget):
    """Dehaze an image layer with a trained model: adds MMSE, std and (optionally) samples."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self.model_path = FileEdit(label="model", mode="d", nullable=True,
                                   tooltip="A model directory, or type the path of a .zip "
                                           "archive (hazematching.model_io.export_archive).")
        self.image = ComboBox(label="image", choices=_image_layers(viewer),
                              tooltip="The widefield image to dehaze.")
        self.axes = ComboBox(label="axes", choices=AXES_CHOICES, value="auto",
                             tooltip="auto: YX for 2-D layers, ZYX for 3-D layers (stacks are "
                                     "dehazed plane by plane).")
        self.n_samples = SpinBox(label="samples", min=0, max=100_000, value=0,
                                 tooltip="Posterior samples per pixel; 0 = the preset's number "
                                         f"({_preset_samples()}).")
        self.preset = ComboBox(label="preset", choices=PRESET_CHOICES, value="fast",
                               tooltip="fast: 8 antithetic samples × 6 Euler steps (about "
                                       "70–80× faster than the published inference; a less "
                                       "well calibrated std); balanced: 16 × 2 midpoint "
                                       "steps (about 50×); "
                                       "default: 50 samples, midpoint rule with 18 calls, "
                                       "256-px tiles; "
                                       "paper: the published inference; model: the sampling "
                                       "settings saved with the model.")
        self.device = ComboBox(label="device", choices=available_devices())
        self.keep_samples = CheckBox(text="add the samples as a stack", value=False)
        super().__init__(viewer, [self.model_path, self.image, self.axes, self.n_samples,
                                  self.preset, self.device, self.keep_samples], "Dehaze")
        self._source: tuple[LayerSpec, str] | None = None

    def make_task(self, cancel: threading.Event) -> Generator[Progress, None, PredictResult]:
        layer = self.image.value
        if self.model_path.value is None:
            raise ValueError("choose a model directory or .zip archive")
        if layer is None:
            raise ValueError("choose an image layer (File > Open Sample > HazeMatching adds a "
                             "simulated one)")
        axes = layer_axes(layer.name, layer.data.shape, self.axes.value, rgb=layer.rgb,
                          multiscale=layer.multiscale)
        self._source = (_layer_spec(layer), axes)
        return predict_task(self.model_path.value, layer.data, axes,
                            preset=self.preset.value, n_samples=self.n_samples.value or None,
                            return_samples=self.keep_samples.value, device=self.device.value,
                            cancel=cancel)

    def on_result(self, result: PredictResult) -> None:
        assert self._source is not None
        spec, axes = self._source
        for data, kwargs, _ in result_layers(result, spec, axes):
            _add_or_replace(self.viewer, data, kwargs)
        self.status.value = (f"done: {result.n_samples} sample(s), preset {result.preset}"
                             + ("" if result.calibrated else ", std not calibrated"))


class TrainWidget(_TaskWidget):
    """Train a model on a pair of layers or on a folder of pairs."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self.source = RadioButtons(label="train on", choices=("layers", "folder"),
                                   value="layers", orientation="horizontal")
        self.widefield = ComboBox(label="widefield", choices=_image_layers(viewer),
                                  tooltip="The hazy input image.")
        self.confocal = ComboBox(label="confocal", choices=_image_layers(viewer),
                                 tooltip="The clean target, registered to the widefield image.")
        self.axes = ComboBox(label="axes", choices=("auto", "YX", "ZYX", "TYX", "SYX"),
                             value="auto", tooltip="Stacks are used plane by plane.")
        self.folder = FileEdit(label="folder", mode="d", nullable=True, visible=False,
                               tooltip="A dataset root (train/ + val/, train_crop/ + val_crop/) "
                                       "or one folder of pairs, as for `hazematching train`.")
        self.config = FileEdit(label="config", mode="r", filter="*.yaml *.yml", nullable=True,
                               tooltip="Optional YAML config (`hazematching config my.yaml`); "
                                       "default: the paper's setup.")
        self.epochs = SpinBox(label="epochs", min=1, max=1_000_000, value=200)
        self.minutes = FloatSpinBox(label="minutes", min=0, max=1_000_000, value=10, step=1,
                                    tooltip="Wall-clock training budget; 0 = no limit.")
        self.out_dir = FileEdit(label="output", mode="d", nullable=True,
                                tooltip="The model folder (created if missing; a folder with "
                                        "checkpoints continues their training).")
        self.calibrate = CheckBox(text="calibrate the std on the validation data", value=True)
        super().__init__(viewer, [self.source, self.widefield, self.confocal, self.axes,
                                  self.folder, self.config, self.epochs, self.minutes,
                                  self.out_dir, self.calibrate], "Train")
        self.source.changed.connect(self._show_source)

    def _show_source(self, source: str) -> None:
        for w in (self.widefield, self.confocal, self.axes):
            w.visible = source == "layers"
        self.folder.visible = source == "folder"

    def make_task(self, cancel: threading.Event) -> Generator[Progress, None, Any]:
        config = ModelConfig() if self.config.value is None else ModelConfig.from_yaml(
            self.config.value)
        if self.out_dir.value is None:
            raise ValueError("choose an output folder for the model")
        if self.source.value == "folder":
            if self.folder.value is None:
                raise ValueError("choose a folder of training pairs")
            data: Any = self.folder.value
        else:
            wf, cf = self.widefield.value, self.confocal.value
            if wf is None or cf is None or wf is cf:
                raise ValueError("choose two different image layers: the widefield input and "
                                 "its confocal target")
            axes = layer_axes(wf.name, wf.data.shape, self.axes.value, rgb=wf.rgb or cf.rgb,
                              multiscale=wf.multiscale or cf.multiscale)
            data = layer_training_pairs(np.asarray(cf.data), np.asarray(wf.data), axes,
                                        patch_size=config.data.patch_size,
                                        val_fraction=config.data.val_fraction,
                                        names=(cf.name, wf.name))
        return train_task(config, data, self.out_dir.value, epochs=self.epochs.value,
                          minutes=self.minutes.value or None, calibrate=self.calibrate.value,
                          cancel=cancel)

    def on_result(self, result: Any) -> None:
        self.status.value = f"model saved to {result}"
        show_info(f"hazematching: model saved to {result}")


def _image_layers(viewer: napari.viewer.Viewer) -> Callable[[Widget], list[tuple[str, Image]]]:
    """A choices callback: the viewer's image layers as (name, layer) pairs."""
    return lambda _widget: [(layer.name, layer) for layer in viewer.layers
                            if isinstance(layer, Image)]


def _preset_samples() -> str:
    return ", ".join(f"{name}: {p['n_samples']}" for name, p in SAMPLING_PRESETS.items())


def _layer_spec(layer: Image) -> LayerSpec:
    return LayerSpec(name=layer.name, scale=tuple(layer.scale), translate=tuple(layer.translate),
                     units=tuple(str(u) for u in layer.units),
                     axis_labels=tuple(layer.axis_labels), metadata=dict(layer.metadata))


def _add_or_replace(viewer: napari.viewer.Viewer, data: np.ndarray,
                    kwargs: dict[str, Any]) -> Image:
    """Add an image layer, or, as magicgui does for a returned layer, update the image layer of
    the same name (keeping its place and display settings) if there is one."""
    name = kwargs["name"]
    existing = viewer.layers[name] if name in viewer.layers else None  # noqa: SIM401 (no .get)
    if not isinstance(existing, Image) or existing.ndim != data.ndim:
        if existing is not None:
            viewer.layers.remove(existing)
        return viewer.add_image(data, **kwargs)
    existing.data = data
    for key in ("scale", "translate", "units", "axis_labels", "metadata"):
        if key in kwargs:
            setattr(existing, key, kwargs[key])
    existing.reset_contrast_limits()
    return existing
