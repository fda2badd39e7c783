"""The plugin's work without Qt: presets, layer checks, result layers and the long tasks.

The long tasks (:func:`predict_task`, :func:`train_task`) are generators: they yield
:class:`Progress` between chunks of work and return their result. A worker thread runs them
(napari's ``thread_worker``), and stopping at a yield is how Cancel works — ``Model.predict`` and
``Model.fit`` have no cancel hook, so prediction runs plane by plane and training epoch by epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike

from hazematching.api import Model, Prediction, load_model
from hazematching.cli.common import USER_ERRORS
from hazematching.config import AXES_ALLOWED, SAMPLING_PRESETS, ModelConfig, preset_overrides
from hazematching.data.pairs import PairedImages, load_pairs, resolve_split_dirs
from hazematching.io import check_axes, to_planes
from hazematching.training import CHECKPOINT_DIR, read_checkpoint

#: Sampling presets offered: the library's named ones (``config.SAMPLING_PRESETS``: "fast", the
#: default configuration, and "paper", the published inference) and "model", the sampling
#: settings saved with the model.
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


def user_message(err: BaseException) -> str:
    """The message to show for `err`: the text of the errors the CLI reports as the user's to
    fix (see ``cli.common.USER_ERRORS``), with the exception's type for anything else."""
    return str(err) if isinstance(err, USER_ERRORS) else f"{type(err).__name__}: {err}"


def guarded(task: Generator[Progress, None, Any]) -> Generator[Progress, None, Any]:
    """Run `task` unchanged, but raise any error in it as :class:`TaskFailed` with its
    :func:`user_message`."""
    try:
        return (yield from task)
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
                 device: str = "auto") -> Generator[Progress, None, PredictResult]:
    """Load a model and dehaze `image` through ``Model.predict``, one plane at a time.

    Planes of a stack (Z, T or S axis) are predicted one by one so that the task can stop
    between them; each plane gets its own seed (``sampling.seed + plane``, if the model is
    seeded), as the planes of one call would draw different noise.

    Args:
        model_path: a model directory or ``.zip`` archive.
        image: raw widefield image with dimensions `axes` (one of ``AXES_ALLOWED``): a numpy
            array or a lazy one (dask, zarr), read here, a plane at a time for stacks.
        preset: one of :data:`PRESET_CHOICES`.
        n_samples: posterior samples per pixel; None = the preset's (or the model's) setting.
        return_samples: keep the samples, (S, …, Y, X).
        device: 'auto', 'cpu', 'cuda:0', ….

    Yields:
        :class:`Progress`: loading, then per plane (total 0 = one step of unknown length).

    Returns:
        :class:`PredictResult`; for an image without a plane axis its prediction is exactly
        what one ``Model.predict`` call gives.
    """
    overrides = {} if preset == "model" else preset_overrides(preset)
    axes = check_axes(axes, np.ndim(image))
    plane_axis = axes[0] if axes[0] in _PLANE_AXES else None
    n_planes = image.shape[0] if plane_axis else 1
    yield Progress(0, n_planes if n_planes > 1 else 0, f"loading {Path(model_path).name}")
    model = load_model(model_path)
    model.reconfigure(overrides)
    n_used = model.n_samples_for(n_samples)
    if not plane_axis:
        yield Progress(0, 0, f"sampling {n_used} sample(s)")
        pred = model.predict(np.asarray(image), axes, n_samples=n_samples,
                             return_samples=return_samples, device=device)
    else:
        base_seed, planes = model.config.sampling.seed, []
        for i in range(n_planes):
            yield Progress(i, n_planes, f"plane {i + 1}/{n_planes}: {n_used} sample(s)")
            if base_seed is not None:
                model.reconfigure({"sampling.seed": base_seed + i})
            planes.append(model.predict(np.asarray(image[i]), axes[1:], n_samples=n_samples,
                                        return_samples=return_samples, device=device))
        pred = _stack_planes(planes, axes.replace("C", ""))
    yield Progress(n_planes, n_planes, "done")
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
               calibrate: bool = True) -> Generator[Progress, None, Path]:
    """Train a model with ``Model.fit``, one epoch per call, then optionally calibrate it.

    Each call resumes from ``out_dir/checkpoints/last.ckpt`` and saves the model directory, so
    stopping between epochs leaves a model that loads; a folder that already has checkpoints
    continues from them (as the CLI does). The training seed is advanced per epoch, so that
    each epoch draws new noise. Lightning restores its timer from the checkpoint, so `minutes`
    bounds the training time of all calls together.

    Args:
        config: the model config (its ``training.epochs``/``max_minutes`` are replaced).
        data: a folder (read by :func:`folder_training_pairs`) or raw (train, val) pairs.
        out_dir: the model directory.
        epochs: total epochs to train (counting those of a resumed run).
        minutes: wall-clock training budget; None = no limit.
        calibrate: fit the std calibration on `val` afterwards (stochastic methods).

    Yields:
        :class:`Progress` in epochs (epoch budget) or seconds (time budget, if that is the
        tighter bound).

    Returns:
        The model directory.
    """
    out = Path(out_dir)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if isinstance(data, tuple):
        train, val = data
    else:
        yield Progress(0, 0, f"reading {data}")
        train, val = folder_training_pairs(data, config)
    base = config.with_overrides({"training.max_minutes": minutes or None,
                                  "training.progress_bar": False}, source="train widget")
    last = out / CHECKPOINT_DIR / "last.ckpt"
    done = finished_epochs(read_checkpoint(last)) if last.exists() else 0
    start, model = time.monotonic(), None
    while model is None or done < epochs:
        yield training_progress(done, epochs, time.monotonic() - start, minutes)
        # Past the budget already (a resumed folder), one call with no epoch to train loads it.
        target = done + 1 if done < epochs else done
        chunk = base.with_overrides({"training.epochs": target,
                                     "training.seed": base.training.seed + done})
        model = Model(chunk).fit(train, val, out_dir=out, resume=True)
        reached = int(model.training_summary.get("epochs", target))
        if reached < target:
            break  # the time budget ran out within the epoch
        done = reached
    yield training_progress(done, epochs, time.monotonic() - start, minutes)
    if calibrate and model.method.stochastic:
        yield Progress(0, 0, "calibrating the std on the validation pairs")
        model.calibrate(val)
    return out


def finished_epochs(checkpoint: dict[str, Any]) -> int:
    """Epochs a Lightning checkpoint has finished, i.e. the epoch a resumed run starts at.

    Its fit loop's count of processed epochs; its ``epoch`` key is the 0-based epoch it was
    written in, one less when written at validation end and equal after the epoch's end, so it
    is only the fallback (never more than the truth, which is what resuming needs)."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    processed = loops.get("epoch_progress", {}).get("current", {}).get("processed")
    return int(processed if processed is not None else checkpoint.get("epoch", 0))


def training_progress(done: int, epochs: int, elapsed_s: float,
                      minutes: float | None) -> Progress:
    """Progress of a training in epochs, or in seconds when the time budget (`minutes`, None =
    none) is the further advanced of the two."""
    text = f"epoch {done}/{epochs}"
    if minutes:
        budget = max(1, round(minutes * 60))
        text += f", {elapsed_s / 60:.1f} of {minutes:g} min"
        if elapsed_s / budget > done / epochs:
            return Progress(min(int(elapsed_s), budget), budget, text)
    return Progress(min(done, epochs), epochs, text)
