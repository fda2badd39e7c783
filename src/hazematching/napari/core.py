"""The plugin's work without Qt: presets, layer checks, result layers and the long tasks.

The long tasks (:func:`predict_task`, :func:`train_task`) are generators: they yield
:class:`Progress` as work is done and return their result. A worker thread runs them (napari's
``thread_worker``); each long library call inside (``Model.predict``, ``Model.fit``) runs in a
helper thread whose progress hook (``progress_callback``, a Lightning callback) reports to the
generator, which yields it, and checks the task's `cancel` event: a prediction stops within one
network batch, a training after the current step. A cancelled task raises :class:`Cancelled`.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Timer
from numpy.typing import ArrayLike

from hazematching.api import Model, Prediction, load_model
from hazematching.cli.common import USER_ERRORS
from hazematching.config import AXES_ALLOWED, SAMPLING_PRESETS, ModelConfig, preset_overrides
from hazematching.data.pairs import PairedImages, load_pairs, resolve_split_dirs
from hazematching.io import check_axes, to_planes

#: Sampling presets offered: the library's named ones (``config.SAMPLING_PRESETS``: the default
#: configuration, "fast", "balanced", and "paper", the published inference) and "model", the
#: sampling settings saved with the model.
PRESET_CHOICES = (*SAMPLING_PRESETS, "model")
#: Axes a layer may be given in the widgets; "auto" = YX for 2-D, ZYX for 3-D layers.
AXES_CHOICES = ("auto", *AXES_ALLOWED)
#: Colormap of the std layer, so that it is never mistaken for an image.
STD_COLORMAP = "magma"
_PLANE_AXES = "ZTS"


@dataclass(frozen=True)
class Progress:
    """A step of a long task: `done` of `total` chunks (total 0 = unknown), and what it is doing."""

    done: int
    total: int
    message: str


class TaskFailed(Exception):
    """A task's error, carrying the message to show.

    Not a RuntimeError on purpose: superqt's generator worker takes a RuntimeError for "the
    worker was deleted" and drops it without emitting ``errored`` or ``finished``.
    """


class Cancelled(Exception):
    """A task stopped because its `cancel` event was set; the message says what was kept.
    (Not a RuntimeError, for the reason given at :class:`TaskFailed`.)"""


_T = TypeVar("_T")


def _in_helper_thread(call: Callable[[Callable[[Progress], None]], _T],
                      cancel: threading.Event) -> Generator[Progress, None, _T]:
    """Run ``call(report)`` in a helper thread, yield each :class:`Progress` it reports, and
    return its result (or raise its exception).

    This is how a task keeps yielding, and so the viewer's progress bar keeps moving, while one
    long library call runs. ``report`` returns once the step has been handed on (the generator
    is resumed after yielding it), so the call never runs ahead of its consumer: a consumer
    that sets `cancel` on seeing a step stops the call right there. Closing the generator sets
    `cancel` and waits for the call to end, so no call outlives its task.
    """
    updates: queue.SimpleQueue[Progress | None] = queue.SimpleQueue()
    handed_on = threading.Semaphore(0)

    def report(step: Progress) -> None:
        updates.put(step)
        handed_on.acquire()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hazematching-task") as pool:
        future = pool.submit(call, report)
        future.add_done_callback(lambda _: updates.put(None))
        while (step := updates.get()) is not None:
            try:
                yield step
            except BaseException:  # closed or thrown into: stop the call before waiting for it
                cancel.set()
                raise
            finally:
                handed_on.release()
    return future.result()


def user_message(err: BaseException) -> str:
    """The message to show for `err`: the text of the errors the CLI reports as the user's to
    fix (see ``cli.common.USER_ERRORS``), with the exception's type for anything else."""
    return str(err) if isinstance(err, USER_ERRORS) else f"{type(err).__name__}: {err}"


def guarded(task: Generator[Progress, None, Any]) -> Generator[Progress, None, Any]:
    """Run `task` unchanged, but raise any error in it as :class:`TaskFailed` with its
    :func:`user_message`."""
    try:
        return (yield from task)
    except Cancelled:
        raise
    except Exception as err:
        raise TaskFailed(user_message(err)) from err


def available_devices() -> list[str]:
    """Devices to offer: 'auto' (a GPU if there is one), 'cpu', then each CUDA device and MPS."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def layer_axes(name: str, shape: Sequence[int], axes: str = "auto", *, rgb: bool = False,
               multiscale: bool = False) -> str:
    """The axes of a napari image layer, checked against its shape.

    Args:
        name: the layer's name (for messages).
        shape: the layer's data shape.
        axes: one of :data:`AXES_CHOICES`; 'auto' = YX for 2-D, ZYX for 3-D data.
        rgb, multiscale: the layer's flags; both are refused.

    Raises:
        ValueError: an RGB or multiscale layer, or axes that do not fit the shape.
    """
    source = f"layer {name!r}"
    if rgb:
        raise ValueError(f"{source} is RGB; hazematching needs a single-channel (grayscale) "
                         f"widefield image")
    if multiscale:
        raise ValueError(f"{source} is multiscale; add its full-resolution level as a layer")
    if axes == "auto":
        guess = {2: "YX", 3: "ZYX"}.get(len(shape))
        if guess is None:
            raise ValueError(f"{source} has {len(shape)} dimensions (shape {tuple(shape)}); "
                             f"choose its axes, one of {', '.join(AXES_ALLOWED)}")
        return guess
    return check_axes(axes, len(shape), source)


@dataclass(frozen=True)
class LayerSpec:
    """What result layers take over from the layer they were computed from: its name and, per
    data dimension, scale, translate, units and axis labels, plus its metadata."""

    name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[str, ...] | None = None
    axis_labels: tuple[str, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def without_channel(self, axes: str) -> LayerSpec:
        """The spec of a result: the C axis of `axes` (if any) removed from every per-axis field."""
        keep = [i for i, a in enumerate(axes) if a != "C"]

        def pick(values: tuple | None) -> tuple | None:
            return None if values is None else tuple(values[i] for i in keep)

        return replace(self, scale=pick(self.scale), translate=pick(self.translate),
                       units=pick(self.units), axis_labels=pick(self.axis_labels))

    def layer_kwargs(self, *, leading: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``viewer.add_image``; `leading` adds a first 'sample' axis."""
        kwargs: dict[str, Any] = {"scale": self.scale, "translate": self.translate}
        if self.units is not None:
            kwargs["units"] = self.units
        if self.axis_labels is not None:
            kwargs["axis_labels"] = self.axis_labels
        if leading:
            extra = {"scale": 1.0, "translate": 0.0, "units": "pixel", "axis_labels": "sample"}
            kwargs = {k: (extra[k], *v) for k, v in kwargs.items()}
        return kwargs


@dataclass
class PredictResult:
    """What :func:`predict_task` returns: the prediction and how it was made."""

    prediction: Prediction
    model: str
    method: str
    n_samples: int
    preset: str
    stochastic: bool
    calibrated: bool
    sampling: dict[str, Any] = field(default_factory=dict)  # the sampling settings used


def predict_task(model_path: str | Path, image: ArrayLike, axes: str, *, preset: str = "fast",
                 n_samples: int | None = None, return_samples: bool = False,
                 device: str = "auto", cancel: threading.Event | None = None
                 ) -> Generator[Progress, None, PredictResult]:
    """Load a model and dehaze `image` through ``Model.predict``, one plane at a time.

    Planes of a stack (Z, T or S axis) are predicted one by one, so that a lazy stack is read a
    plane at a time; each plane gets its own seed (``sampling.seed + plane``, if the model is
    seeded), as the planes of one call would draw different noise.

    Args:
        model_path: a model directory or ``.zip`` archive.
        image: raw widefield image with dimensions `axes` (one of ``AXES_ALLOWED``): a numpy
            array or a lazy one (dask, zarr), read here, a plane at a time for stacks.
        preset: one of :data:`PRESET_CHOICES`.
        n_samples: posterior samples per pixel; None = the preset's (or the model's) setting.
        return_samples: keep the samples, (S, …, Y, X).
        device: 'auto', 'cpu', 'cuda:0', ….
        cancel: set it (from any thread) to stop the prediction within one network batch.

    Yields:
        :class:`Progress`: loading (total 0: of unknown length), then in work units (one sample
        of one tile; every plane has as many) after each network batch, then "done".

    Returns:
        :class:`PredictResult`; for an image without a plane axis its prediction is exactly
        what one ``Model.predict`` call gives.

    Raises:
        Cancelled: `cancel` was set; nothing is returned.
    """
    cancel = cancel or threading.Event()
    overrides = {} if preset == "model" else preset_overrides(preset)
    axes = check_axes(axes, np.ndim(image))
    plane_axis = axes[0] if axes[0] in _PLANE_AXES else None
    n_planes = image.shape[0] if plane_axis else 1
    yield Progress(0, 0, f"loading {Path(model_path).name}")
    model = load_model(model_path)
    model.reconfigure(overrides)
    n_used = model.n_samples_for(n_samples)
    base_seed, planes = model.config.sampling.seed, []
    for i in range(n_planes):
        text = f"plane {i + 1}/{n_planes}: " if plane_axis else ""
        text += f"{n_used} sample(s)" if model.method.stochastic else "predicting"
        if plane_axis and base_seed is not None:
            model.reconfigure({"sampling.seed": base_seed + i})

        def predict_plane(report: Callable[[Progress], None], i: int = i, text: str = text
                          ) -> Prediction:
            def on_units(done: int, total: int) -> None:
                if not cancel.is_set():
                    report(Progress(i * total + done, n_planes * total, text))
                if cancel.is_set():
                    raise Cancelled("cancelled")

            plane = np.asarray(image[i] if plane_axis else image)
            return model.predict(plane, axes[1:] if plane_axis else axes, n_samples=n_samples,
                                 return_samples=return_samples, device=device,
                                 progress_callback=on_units)

        planes.append((yield from _in_helper_thread(predict_plane, cancel)))
    pred = _stack_planes(planes, axes.replace("C", "")) if plane_axis else planes[0]
    yield Progress(1, 1, "done")
    return PredictResult(pred, str(model_path), model.config.method, n_used, preset,
                         model.method.stochastic, model.calibration is not None,
                         model.config.sampling.model_dump(mode="json"))


def _stack_planes(planes: list[Prediction], out_axes: str) -> Prediction:
    """Join per-plane predictions into the stack's: planes along axis 0 (axis 1 of samples)."""
    first = planes[0]
    return Prediction(
        mmse=np.stack([p.mmse for p in planes]),
        std=None if first.std is None else np.stack([p.std for p in planes]),
        samples=None if first.samples is None else np.stack([p.samples for p in planes], 1),
        axes=out_axes)


LayerData = tuple[np.ndarray, dict[str, Any], Literal["image"]]


def result_layers(result: PredictResult, source: LayerSpec, axes: str) -> list[LayerData]:
    """napari layer-data tuples for a prediction of the layer `source` with input axes `axes`.

    Returns, bottom to top: the samples as a stack (hidden; if kept), the std (colormap
    :data:`STD_COLORMAP`; stochastic methods), the MMSE. Each keeps the source's scale,
    translate, units and axis labels (less its C axis; samples get a leading 'sample' axis) and
    its metadata, plus ``metadata["hazematching"]`` saying how it was made.
    """
    pred, spec = result.prediction, source.without_channel(axes)

    def meta(result_axes: str) -> dict[str, Any]:
        return {**spec.metadata, "hazematching": {
            "model": result.model, "method": result.method, "axes": result_axes,
            "n_samples": result.n_samples, "preset": result.preset,
            "sampling": result.sampling, "calibrated": result.calibrated,
            "source_layer": source.name}}

    layers: list[LayerData] = []
    if pred.samples is not None and result.stochastic:
        layers.append((pred.samples, {"name": f"{source.name} samples", "visible": False,
                                      "metadata": meta("S" + pred.axes),
                                      **spec.layer_kwargs(leading=True)}, "image"))
    if pred.std is not None:
        kind = "std" if result.calibrated else "std (uncalibrated)"
        layers.append((pred.std, {"name": f"{source.name} {kind}", "colormap": STD_COLORMAP,
                                  "metadata": meta(pred.axes), **spec.layer_kwargs()}, "image"))
    name = f"{source.name} {'MMSE' if result.stochastic else 'prediction'}"
    layers.append((pred.mmse, {"name": name, "metadata": meta(pred.axes),
                               **spec.layer_kwargs()}, "image"))
    return layers


# ------------------------------------------------------------------------------------ training

def layer_training_pairs(target: np.ndarray, widefield: np.ndarray, axes: str, *,
                         patch_size: int, val_fraction: float = 0.1,
                         names: tuple[str, str] = ("target", "widefield")
                         ) -> tuple[PairedImages, PairedImages]:
    """Training and validation pairs from one registered pair of layers.

    The last ``max(patch_size, ceil(val_fraction · L))`` pixels along the longer image axis
    (length L) are held out for validation, so that no pixel is in both sets.

    Args:
        target, widefield: confocal target and widefield input, same shape, axes `axes`
            (YX, or ZYX/TYX/SYX used plane by plane), any real dtype.
        patch_size: the training patch side; both parts must be at least this large.
        names: the layers' names (for messages).

    Raises:
        ValueError: shapes differ, axes with a C axis, or an image too small to split.
    """
    if np.shape(target) != np.shape(widefield):
        raise ValueError(f"layers {names[0]!r} {np.shape(target)} and {names[1]!r} "
                         f"{np.shape(widefield)} differ in shape; training needs registered "
                         f"pairs of the same size")
    if "C" in axes:
        raise ValueError(f"axes {axes!r}: pick single-channel layers (no C axis) to train on")
    t = to_planes(np.asarray(target, np.float32), axes)[:, 0]
    x = to_planes(np.asarray(widefield, np.float32), axes)
    axis = -1 if t.shape[-1] >= t.shape[-2] else -2
    length, other = t.shape[axis], t.shape[-2 if axis == -1 else -1]
    n_val = max(patch_size, math.ceil(val_fraction * length))
    if length - n_val < patch_size or other < patch_size:
        raise ValueError(f"layer {names[0]!r} is {t.shape[-2]}×{t.shape[-1]} px: too small to "
                         f"hold out a {n_val}-px validation strip and keep {patch_size}-px "
                         f"training patches (data.patch_size); use larger images, a folder "
                         f"with validation pairs, or a config with a smaller patch size")
    cut = length - n_val

    def part(a: np.ndarray, sl: slice) -> np.ndarray:
        return np.ascontiguousarray(a[..., sl] if axis == -1 else a[..., sl, :])

    train = PairedImages([f"{names[0]}_train"], [part(t, slice(None, cut))],
                         [part(x, slice(None, cut))])
    val = PairedImages([f"{names[0]}_val"], [part(t, slice(cut, None))],
                       [part(x, slice(cut, None))])
    return train, val


def folder_training_pairs(root: str | Path, config: ModelConfig
                          ) -> tuple[PairedImages, PairedImages]:
    """Training and validation pairs from a folder, as ``hazematching train DATA`` reads it: a
    dataset root with train/ + val/ (or train_crop/ + val_crop/), or one folder of pairs with
    ``data.val_fraction`` of its images held out (split seeded by ``training.seed``)."""
    train_dir, val_dir = resolve_split_dirs(root)
    train = load_pairs(train_dir, config.data.layout, config.data.axes)
    if val_dir is None:
        return train.split(config.data.val_fraction, seed=config.training.seed)
    return train, load_pairs(val_dir, config.data.layout, config.data.axes)


def train_task(config: ModelConfig, data: str | Path | tuple[PairedImages, PairedImages],
               out_dir: str | Path, *, epochs: int, minutes: float | None = None,
               calibrate: bool = True, cancel: threading.Event | None = None
               ) -> Generator[Progress, None, Path]:
    """Train a model with one ``Model.fit`` call, then optionally calibrate it.

    A folder that already has checkpoints continues from ``checkpoints/last.ckpt`` (as the CLI
    does): its epochs count towards `epochs` and, as Lightning restores its timer, its training
    time towards `minutes`.

    Args:
        config: the model config (its ``training.epochs``/``max_minutes`` are replaced).
        data: a folder (read by :func:`folder_training_pairs`) or raw (train, val) pairs.
        out_dir: the model directory.
        epochs: total epochs to train (counting those of a resumed run).
        minutes: wall-clock training budget; None = no limit.
        calibrate: fit the std calibration on `val` afterwards (stochastic methods).
        cancel: set it (from any thread) to stop the training after its current step.
            Lightning then validates and writes ``best.ckpt`` and ``last.ckpt``, and the model
            directory is saved (with the best checkpoint's weights, uncalibrated): nothing
            trained is lost. Training into the folder again resumes from that step's
            checkpoint; Lightning counts the interrupted epoch as done (its data loader has no
            state to resume mid-epoch), so it continues with the next epoch.

    Yields:
        :class:`Progress` after every training batch, in batches (epoch budget) or seconds
        (time budget, if that is the tighter bound), then the calibration.

    Returns:
        The model directory.

    Raises:
        Cancelled: `cancel` was set; its message says where the model is.
    """
    cancel = cancel or threading.Event()
    out = Path(out_dir)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if isinstance(data, tuple):
        train, val = data
    else:
        yield Progress(0, 0, f"reading {data}")
        train, val = folder_training_pairs(data, config)
    # The calibration runs below, where a cancelled training skips it.
    cfg = config.with_overrides({"training.epochs": epochs, "training.max_minutes": minutes or None,
                                 "training.progress_bar": False, "training.calibrate": False},
                                source="train widget")
    yield Progress(0, 0, "preparing the training")

    def fit(report: Callable[[Progress], None]) -> Model:
        hook = _TrainingHook(cancel, report, minutes)
        return Model(cfg).fit(train, val, out_dir=out, resume=True, callbacks=[hook])

    model = yield from _in_helper_thread(fit, cancel)
    summary = model.training_summary
    if cancel.is_set():
        raise Cancelled(f"cancelled after training step {summary.get('steps', 0)}; the model "
                        f"is saved in {out} (uncalibrated), and training into that folder again "
                        f"continues from that step, with the next epoch")
    yield Progress(1, 1, f"trained {summary.get('epochs', epochs)} epoch(s), "
                         f"{summary.get('steps', 0)} step(s)")
    if calibrate and model.method.stochastic:
        yield Progress(0, 0, "calibrating the std on the validation pairs")
        model.calibrate(val)
    return out


class _TrainingHook(Callback):
    """Reports a training's progress after every batch and, once `cancel` is set, asks
    Lightning to stop: it honours ``trainer.should_stop`` after the current step (mid-epoch),
    validates, writes its checkpoints and ends the fit."""

    def __init__(self, cancel: threading.Event, report: Callable[[Progress], None],
                 minutes: float | None):
        self.cancel, self.report, self.minutes = cancel, report, minutes

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        elapsed = timer.time_elapsed("train") if timer is not None else 0.0
        self.report(training_progress(trainer.current_epoch + 1, trainer.max_epochs,
                                      batch_idx + 1, int(trainer.num_training_batches),
                                      elapsed, self.minutes))
        if self.cancel.is_set():
            trainer.should_stop = True


def training_progress(epoch: int, epochs: int, batch: int, batches: int, elapsed_s: float,
                      minutes: float | None) -> Progress:
    """Progress of a training in batches — batch `batch` of `batches` per epoch in epoch
    `epoch` of `epochs` (both 1-based) — or in seconds when the time budget (`minutes`, None =
    none) is the further advanced of the two."""
    done, total = (epoch - 1) * batches + batch, epochs * batches
    text = f"epoch {epoch}/{epochs}, batch {batch}/{batches}"
    if minutes:
        budget = max(1, round(minutes * 60))
        text += f", {elapsed_s / 60:.1f} of {minutes:g} min"
        if elapsed_s / budget > done / total:
            return Progress(min(int(elapsed_s), budget), budget, text)
    return Progress(min(done, total), total, text)
