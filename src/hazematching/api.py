"""The Python API: ``HazeMatching(config).fit(...)``, ``model.predict(...)``, ``load_model(...)``.

Every method (HazeMatching and the baselines) goes through the same :class:`Model`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from hazematching import calibration as cal
from hazematching.config import ModelConfig
from hazematching.data.normalization import Normalizer
from hazematching.data.pairs import PairedImages, load_pairs, resolve_split_dirs
from hazematching.data.patches import FixedPatches, RandomPatches
from hazematching.blocks import AxesView, MappedArray
from hazematching.io import (
    ImageError,
    ImageFile,
    atomic_path,
    create_tiff,
    folder_lock,
    from_planes,
    is_zarr_path,
    open_image,
    remove_stale_partials,
    to_planes,
)
from hazematching.methods import build_method
from hazematching.methods.base import Method
from hazematching.model_io import META_FILE, MODEL_FILES, load_model_files, save_model
from hazematching.predict import ArrayLike, ProgressCallback, predict_planes

if TYPE_CHECKING:
    from lightning.pytorch import Callback

    from hazematching.distributed import Ranks


#: Formats :meth:`Model.predict_file` writes, and the suffix of their outputs.
OutputFormat = Literal["tiff", "zarr"]
OUTPUT_SUFFIX: dict[str, str] = {"tiff": ".tif", "zarr": ".ome.zarr"}


class CalibrationMismatch(UserWarning):
    """A prediction's sampling settings differ from those the model's calibration was fitted
    for (see :meth:`Model.calibration_mismatch`)."""


@dataclass
class Prediction:
    """A prediction in the input's intensity units.

    Attributes:
        mmse: (…, Y, X) the posterior mean (or the single prediction), axes = input axes minus C.
        std: same shape, per-pixel posterior std (calibrated if the model is); None for
            deterministic methods.
        samples: (S, …, Y, X) posterior samples if requested, else None.
        axes: axes of `mmse` and `std`.
    """

    mmse: np.ndarray
    std: np.ndarray | None
    samples: np.ndarray | None
    axes: str


@dataclass
class FileResult:
    """One input of :meth:`Model.predict_files`: its outputs by kind (mmse, std, samples),
    whether they already existed from an earlier run (then nothing was computed), and the rank
    of the process that predicted or skipped it (0 unless the run is distributed). For an
    image whose planes were split over the processes, `planes` are the indices of those this
    rank predicted (None when one rank predicted the whole image)."""

    source: Path
    outputs: dict[str, Path]
    skipped: bool
    rank: int = 0
    planes: tuple[int, ...] | None = None


@dataclass
class CalibrationReport:
    """Outcome of :meth:`Model.calibrate`: the fit and ENCE before/after on the given data."""

    calibration: cal.Calibration
    ence_before: float
    ence_after: float
    curve_before: cal.CalibrationCurve
    curve_after: cal.CalibrationCurve
    #: ENCE on images the calibration was not fitted on (2-fold by image, see
    #: :func:`hazematching.calibration.heldout_ence`); None with a single image. The in-sample
    #: `ence_after` flatters the fit: a monotone curve is scored on the bins it went through.
    ence_heldout: float | None = None


def check_device(device: str | torch.device | None) -> None:
    """Refuse a device name that is malformed or absent on this machine, before any work.

    Args:
        device: None or 'auto' (always fine), 'cpu', 'cuda', 'cuda:N', 'mps'.

    Raises:
        ValueError: naming the device and what is available.
    """
    if device is None or device == "auto":
        return
    expected = "expected auto, cpu, cuda, cuda:N or mps"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a device name; {expected}") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            cuda = torch.version.cuda
            build = "a CPU-only build" if cuda is None else f"CUDA {cuda}"
            raise ValueError(f"device {device!r}: no CUDA GPU is available here (torch "
                             f"{torch.__version__}, {build}); use cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {device!r}: this machine has {n} CUDA GPU(s), cuda:0 to "
                             f"cuda:{n - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: Apple MPS is not available here; use cpu or "
                             f"auto")
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r}: unsupported device type {dev.type!r}; {expected}")


def check_n_samples(n_samples: int | None) -> None:
    """Refuse a number of posterior samples below 1 (None means the config's default)."""
    if n_samples is not None and (isinstance(n_samples, bool) or n_samples < 1):
        raise ValueError(f"n_samples (CLI: --n-samples) must be at least 1, got {n_samples!r}")


def _is_rank_zero() -> bool:
    """False in the extra processes of a multi-process (DDP) run, which leave the model
    directory to rank 0."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


class Model:
    """A restoration model: method + normalisation + calibration, trained or loaded.

    ``Model(config)`` is untrained; :func:`load_model` passes the stored method (with its
    weights), normalisation, calibration and directory.
    """

    def __init__(self, config: ModelConfig | None = None, *, method: Method | None = None,
                 normalizer: Normalizer | None = None,
                 calibration: cal.Calibration | None = None, path: Path | None = None,
                 provenance: dict | None = None):
        self.config = config or ModelConfig()
        if method is None:  # initial weights drawn from training.seed, not the global RNG
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.training.seed)
                method = build_method(self.config)
        self.method: Method = method
        self.normalizer = normalizer
        self.calibration = calibration
        self.path = path
        #: What model.json records about how the model was made (training steps, epochs,
        #: best validation loss; the source of an imported model), kept when it is re-saved.
        self.provenance: dict = dict(provenance or {})
        #: After :meth:`fit`: steps, epochs, best validation loss, this process's rank.
        self.training_summary: dict = {}

    # ---------------------------------------------------------------- training
    def fit(self, train: str | Path | PairedImages | None = None,
            val: str | Path | PairedImages | None = None, *, out_dir: str | Path,
            resume: bool = True, overwrite: bool = False,
            callbacks: list[Callback] | None = None,
            keep_normalization: bool = False) -> Model:
        """Train on paired images and save the model directory to `out_dir`.

        Args:
            train: a folder (either layout, or a dataset root with train/ + val/ or
                train_crop/ + val_crop/), or loaded pairs; default ``config.data.train_dir``.
            val: validation folder or pairs; default ``config.data.val_dir``, else a held-out
                fraction (``config.data.val_fraction``) of the training images.
            out_dir: the model directory; checkpoints and logs go inside it. It is locked for
                the duration (a second process training into it fails at once).
            resume: continue from ``out_dir/checkpoints/last.ckpt`` if present.
            overwrite: allow replacing a finished model in `out_dir` by a new training run
                (without it, that is refused; continuing its training with `resume` is not).
            callbacks: extra Lightning callbacks for the trainer, e.g. one that sets
                ``trainer.should_stop`` to end the training early: Lightning then validates,
                writes ``best.ckpt``/``last.ckpt`` (a run resumes from there) and the model is
                saved as after a full run. Ignored by methods that are not trained.
            keep_normalization: train on with the model's own normalisation (and keep its
                provenance, adding this run's) instead of fitting it to `train`: for weights
                that start from a trained model's, e.g. distillation
                (:func:`hazematching.distill.distill`).

        A stochastic method is then calibrated on the validation images (unless
        ``training.calibrate`` is off): crops of at most ``training.calibration_pixels`` pixels
        are predicted with the model's sampling settings, the fit is stored with the model and
        plotted to ``out_dir/calibration.png``.

        Raises:
            ValueError: invalid trainer settings (checked before anything is read), bad data,
                a checkpoint that cannot be resumed from.
            FileExistsError: `out_dir` holds a finished model and neither `resume` applies
                nor `overwrite` is given.
            FolderInUseError: another process is training into `out_dir`.
        """
        from hazematching.training import check_settings
        from hazematching.training import fit as train_loop

        from hazematching.methods.distillation import FlowMapDistillation

        if self.method.trainable:
            check_settings(self.config.training)
        if (self.config.method_options.get("distilled_steps")
                and not isinstance(self.method, FlowMapDistillation)):
            raise ValueError("method_options.distilled_steps marks a model made by `hazematching "
                             "distill`; train without it, then distil the trained model")
        out = Path(out_dir)
        with self._claim_model_dir(out, resume=resume, overwrite=overwrite):
            d = self.config.data
            train_pairs, val_pairs = self._load_training_pairs(train, val)
            if not keep_normalization or self.normalizer is None:
                self.normalizer = Normalizer.fit(train_pairs.targets, train_pairs.inputs,
                                                 d.normalization, d.percentiles)
            n_ch = train_pairs.inputs[0].shape[1]
            if n_ch != self.config.in_channels:
                raise ValueError(f"the data have {n_ch} input channel(s) but config.in_channels "
                                 f"is {self.config.in_channels}")
            out.mkdir(parents=True, exist_ok=True)
            if self.method.trainable:
                train_ds = RandomPatches(train_pairs, self.normalizer, d.patch_size,
                                         length=d.patches_per_epoch, augment=d.augment,
                                         seed=self.config.training.seed)
                val_ds = FixedPatches(val_pairs, self.normalizer, d.patch_size)
                trainer, best = train_loop(self.method, train_ds, val_ds, self.config.training,
                                           out, num_workers=d.num_workers, resume=resume,
                                           callbacks=callbacks)
                is_zero = trainer.is_global_zero
                extra = {"best_checkpoint": best.name if best else None,
                         "val_loss": _best_score(trainer), "epochs": trainer.current_epoch,
                         "steps": trainer.global_step}
                self.training_summary = {**extra, "global_rank": trainer.global_rank,
                                         "world_size": trainer.world_size,
                                         "batches_per_epoch": len(trainer.train_dataloader)}
            else:
                is_zero, extra = True, {}
            if is_zero and self.method.stochastic and self.config.training.calibrate:
                extra["calibration_fit"] = self._calibrate_after_training(val_pairs, out)
            if is_zero:
                self.provenance = {**self.provenance, **extra} if keep_normalization else extra
                save_model(out, self.method, self.normalizer, self.calibration,
                           extra=self.provenance)
                self.path = out
        return self

    def _calibrate_after_training(self, val: PairedImages, out: Path) -> dict[str, object]:
        """Fit the calibration on crops of the validation pairs (at most
        ``training.calibration_pixels`` pixels), plot it to ``out/calibration.png`` and return
        what model.json records of it."""
        cfg = self.config.training
        side = min(_CALIBRATION_CROP, math.isqrt(cfg.calibration_pixels))
        crops = val.crops(cfg.calibration_pixels, side, seed=cfg.seed)
        device = "cpu" if cfg.accelerator == "cpu" else "auto"
        rep = self.calibrate(crops, device=device, plot=out / "calibration.png", save=False,
                             progress=cfg.progress_bar)
        return {"images": len(val), "pixels": int(sum(t.size for t in crops.targets)),
                "n_samples": self.n_samples_for(None), "ence_before": float(rep.ence_before),
                "ence_after": float(rep.ence_after), "ence_heldout": rep.ence_heldout}

    @staticmethod
    @contextlib.contextmanager
    def _claim_model_dir(out: Path, *, resume: bool, overwrite: bool) -> Iterator[None]:
        """Lock `out` for training, refuse to replace a finished model without `overwrite`, and
        clear what a killed run left (temporary files; when starting over, old checkpoints)."""
        from hazematching.training import CHECKPOINT_DIR, CHECKPOINT_NAMES

        if not _is_rank_zero():  # rank 0 of this run holds the lock and prepared the folder
            yield
            return
        with folder_lock(out, "training"):
            checkpoints = [out / CHECKPOINT_DIR / n for n in CHECKPOINT_NAMES]
            continuing = resume and checkpoints[-1].exists()
            if (out / META_FILE).exists() and not continuing and not overwrite:
                raise FileExistsError(f"{out} already holds a finished model; pass --overwrite "
                                      f"(Python: overwrite=True) to replace it, or choose "
                                      f"another --out")
            remove_stale_partials([out / n for n in MODEL_FILES] + checkpoints)
            if not continuing:  # starting over: nothing of an earlier run may be resumed later
                for f in [out / META_FILE, *checkpoints]:
                    f.unlink(missing_ok=True)
            yield

    def _load_training_pairs(self, train, val) -> tuple[PairedImages, PairedImages]:
        d = self.config.data
        train = train if train is not None else d.train_dir
        val = val if val is not None else d.val_dir
        if train is None:
            raise ValueError("no training data: pass a folder or set data.train_dir")
        if not isinstance(train, PairedImages):
            tdir, vdir = resolve_split_dirs(train)
            val = val if val is not None else vdir
            train = load_pairs(tdir, d.layout, d.axes)
        if val is None:
            return train.split(d.val_fraction, seed=self.config.training.seed)
        if not isinstance(val, PairedImages):
            val = load_pairs(val, d.layout, d.axes)
        return train, val

    # -------------------------------------------------------------- prediction
    def _require_trained(self) -> Normalizer:
        if self.normalizer is None:
            raise RuntimeError("the model is not trained: call fit() or load_model() first")
        return self.normalizer

    def n_samples_for(self, n_samples: int | None) -> int:
        """Posterior samples a prediction draws: `n_samples`, else ``config.sampling.n_samples``;
        always 1 for deterministic methods.

        Raises:
            ValueError: `n_samples` below 1.
        """
        check_n_samples(n_samples)
        if not self.method.stochastic:
            return 1
        return n_samples if n_samples is not None else self.config.sampling.n_samples

    def calibration_mismatch(self, n_samples: int | None = None) -> str | None:
        """Why the stored calibration does not fit a prediction with the current sampling
        settings and `n_samples`, in words, or None when it fits (or there is none, or its
        settings were not recorded). The std is then still rescaled by it, but its scale was
        fitted for another estimator: refit with :meth:`calibrate` under these settings."""
        if self.calibration is None or not self.method.stochastic:
            return None
        diff = self.calibration.mismatch(
            self.config.sampling.estimator(self.n_samples_for(n_samples)))
        if not diff:
            return None
        return ("the std calibration was fitted for " + ", ".join(
            f"{k} {a}" for k, (a, _) in diff.items()) + ", this prediction uses " + ", ".join(
            f"{k} {b}" for k, (_, b) in diff.items()) + ": its std is rescaled for another "
            "estimator; refit with `hazematching calibrate MODEL VAL` and these settings")

    def _predict_planes(self, planes: ArrayLike, n_samples: int, device: str | None,
                        samples_out: ArrayLike | None, progress: bool,
                        progress_callback: ProgressCallback | None = None, *,
                        mean_out: ArrayLike | None = None, std_out: ArrayLike | None = None,
                        plane_indices: Sequence[int] | None = None
                        ) -> tuple[ArrayLike, ArrayLike | None]:
        """The one prediction path: raw planes (N, C, Y, X) → MMSE and std (N, Y, X) in target
        intensity units (std calibrated if the model is; None for one sample or a deterministic
        method), written into `mean_out` and `std_out` (default: new numpy arrays), which are
        returned. `samples_out` (N, S, Y, X), if given, receives the samples in target units.

        `planes` and the outputs may be arrays or block views of files
        (:mod:`hazematching.blocks`): the input is normalised and the outputs are mapped back
        to intensities a block at a time, as :func:`~hazematching.predict.predict_planes`
        streams them. `progress_callback` and `plane_indices` (only these planes are
        predicted and written) as for that function."""
        norm = self._require_trained()
        N, _, H, W = planes.shape
        if mean_out is None:
            mean_out = np.zeros((N, H, W), np.float32)
        if std_out is None and self.method.stochastic and n_samples > 1:
            std_out = np.zeros((N, H, W), np.float32)
        calibration, scale = self.calibration, np.float32(norm.target.scale)
        if std_out is not None and (why := self.calibration_mismatch(n_samples)):
            warnings.warn(CalibrationMismatch(why), stacklevel=3)

        def to_std(std: np.ndarray) -> np.ndarray:
            return (std if calibration is None else calibration.apply(std)) * scale

        def mapped(out: ArrayLike | None, write) -> MappedArray | None:
            return None if out is None else MappedArray(out, write=write)

        predict_planes(self.method, MappedArray(planes, read=norm.normalize_input),
                       self.config.sampling, n_samples=n_samples, device=device,
                       samples_out=mapped(samples_out, norm.denormalize_target),
                       mean_out=mapped(mean_out, norm.denormalize_target),
                       std_out=mapped(std_out, to_std), progress=progress,
                       progress_callback=progress_callback, plane_indices=plane_indices)
        return mean_out, std_out

    def predict(self, image: np.ndarray, axes: str = "YX", *, n_samples: int | None = None,
                return_samples: bool = False, device: str | None = "auto",
                progress: bool = False,
                progress_callback: ProgressCallback | None = None) -> Prediction:
        """Dehaze an image of any size.

        Args:
            image: raw widefield image (any real dtype) with dimensions named by `axes`
                ('YX', 'ZYX', 'TYX', 'SYX', or with C for several input channels).
            n_samples: posterior samples (default ``config.sampling.n_samples``); with 1 there
                is no spread, so ``std`` is None.
            return_samples: also return the samples (memory grows with n_samples).
            device: 'auto' (GPU if available), 'cpu', 'cuda', ….
            progress: show a rich progress bar.
            progress_callback: ``progress_callback(done, total)`` in work units (one sample of
                one tile), first with 0 and then after each network batch; an exception it
                raises stops the prediction and propagates (see
                :func:`~hazematching.predict.predict_planes`).
        """
        self._require_trained()
        check_device(device)
        S = self.n_samples_for(n_samples)
        planes = to_planes(np.asarray(image), axes)
        N, _, H, W = planes.shape
        samples = np.zeros((N, S, H, W), np.float32) if return_samples else None
        mmse, std = self._predict_planes(planes, S, device, samples, progress,
                                         progress_callback)
        ax = axes.upper()
        out_axes = ax.replace("C", "")
        if samples is not None:
            samples = np.moveaxis(samples, 1, 0)
            samples = samples[:, 0] if out_axes == "YX" else samples
        return Prediction(mmse=from_planes(mmse, ax),
                          std=None if std is None else from_planes(std, ax),
                          samples=samples, axes=out_axes)

    def reconfigure(self, overrides: dict[str, object]) -> Model:
        """Change settings that leave the weights valid (sampling, inference-time method
        options such as InDI's steps), e.g. ``{"sampling.n_time_points": 10}``.

        The method is rebuilt from the new config and the current weights are loaded into it;
        a change that alters the network (its shapes) is refused. Sampling fields that the
        weights fix (a distilled network's grid, see ``Method.fixed_sampling``) are left as
        they are, with a warning naming the settings that are not applied (a preset's grid
        included).
        """
        fixed = type(self.method).fixed_sampling(self.config)
        ignored = {k: v for k, v in overrides.items() if k.startswith("sampling.")
                   and k.split(".", 1)[1] in fixed and v is not None
                   and v != fixed[k.split(".", 1)[1]]}
        if ignored:
            warnings.warn("this model was distilled for its sampling grid (" + ", ".join(
                f"{k}={v!r}" for k, v in fixed.items()) + "); not applied: " + ", ".join(
                f"{k}={v!r}" for k, v in ignored.items()), UserWarning, stacklevel=2)
            overrides = {k: v for k, v in overrides.items() if k not in ignored}
        config = self.config.with_overrides(overrides, source="reconfigure")
        method = build_method(config)
        try:
            method.load_state_dict(self.method.state_dict())
        except RuntimeError as err:
            raise ValueError(f"these changes alter the network, retrain instead: {err}") from None
        self.config, self.method = config, method.eval()
        return self

    def output_paths(self, path: str | Path, out_dir: str | Path, *,
                     n_samples: int | None = None, save_samples: bool = False,
                     output_format: OutputFormat = "tiff", stem: str | None = None
                     ) -> dict[str, Path]:
        """Where :meth:`predict_file` writes the outputs of `path`, by kind: ``mmse`` always,
        ``std`` for stochastic methods with at least 2 samples, ``samples`` if asked, as
        ``<stem>_<kind>.tif`` or, with ``output_format="zarr"``, ``<stem>_<kind>.ome.zarr``.
        The stem is `stem`, else the file name up to its first dot."""
        if output_format not in OUTPUT_SUFFIX:
            raise ValueError(f"output format {output_format!r} is not one of "
                             f"{', '.join(OUTPUT_SUFFIX)}")
        S = self.n_samples_for(n_samples)
        stem = stem or Path(path).name.split(".")[0]
        kinds = ["mmse"] + (["std"] if self.method.stochastic and S > 1 else [])
        kinds += ["samples"] if save_samples and self.method.stochastic else []
        return {k: Path(out_dir) / f"{stem}_{k}{OUTPUT_SUFFIX[output_format]}" for k in kinds}

    def _input_planes(self, image: ImageFile, channels: list[int] | None) -> AxesView:
        """The planes (N, C, Y, X) of an open image with the model's input channels, read by
        blocks.

        `channels` asked of a 3-D image whose file has no axes metadata (guessed ZYX, e.g. a
        paper-layout pair saved without metadata) are taken along its first axis: the file
        states nothing that this overrides, and asking for a channel says that axis holds
        them. A file whose metadata name another axis is never reinterpreted; the error says
        to pass the axes."""
        axes, path = image.axes, image.path
        if (channels is not None and "C" not in axes and image.origin == "guessed"
                and axes == "ZYX" and all(0 <= c < image.shape[0] for c in channels)):
            image.relabel("CYX", origin="guessed")
            axes = image.axes
        n_c = image.shape[axes.index("C")] if "C" in axes else 1
        if channels is not None:
            if "C" not in axes:
                origin = {"file": "from the file's metadata", "given": "as given",
                          "guessed": "guessed"}[image.origin]
                raise ValueError(f"{path}: channels={channels} given but the image has no C "
                                 f"axis (axes {axes!r} {origin}, shape {image.shape}); if one "
                                 f"of its axes holds the channels, name it: e.g. --axes CYX "
                                 f"(Python: axes='CYX')")
            if any(not 0 <= c < n_c for c in channels):
                raise ValueError(f"{path}: channels {channels} out of range for {n_c} channels")
            n_c = len(channels)
        if n_c != self.config.in_channels:
            raise ImageError(f"{path}: has {n_c} channel(s) (axes {axes}, shape {image.shape}; "
                             f"an RGB file has one per colour) but the model takes "
                             f"{self.config.in_channels}; choose with --channel (Python: "
                             f"channels=[...]), e.g. --channel 1 for the widefield channel of "
                             f"a paper-layout pair")
        stack = "".join("N" if a in "ZTS" else a for a in axes)
        return AxesView(image, stack, "NCYX",
                        select=None if channels is None else {"C": channels})

    def _create_outputs(self, outputs: contextlib.ExitStack, targets: dict[str, Path],
                        image: ImageFile, n_planes: int, n_samples: int,
                        output_format: OutputFormat,
                        staged: dict[str, tuple[Path, str]] | None = None
                        ) -> dict[str, AxesView]:
        """Create each output of `targets` under a temporary name (renamed when `outputs`
        closes without error: the samples first, the MMSE last) with the input's axes (minus C)
        and pixel sizes; return views of them, (N, Y, X) and samples (N, S, Y, X). `staged`,
        if given, receives each kind's temporary path and stored axes, from which other
        processes open the same outputs (:meth:`_open_staged`)."""
        out_axes = image.axes.replace("C", "")
        plane = next((a for a in out_axes if a in "ZTS"), "")
        H, W = image.shape[-2:]
        sizes = {a: v for a, v in image.pixel_sizes.items() if a in out_axes}
        lengths = {"N": n_planes, "K": n_samples, "Y": H, "X": W}
        views = {}
        for kind in ("mmse", "std", "samples"):
            if kind not in targets:
                continue
            stored = out_axes.replace(plane, "N") if plane else out_axes
            if kind == "samples":
                # TIFF: (S, N, Y, X) as ImageJ's TZYX; NGFF: time first, then the sample axis.
                stored = "KNYX" if output_format == "tiff" or plane == "Z" else (
                    "NKYX" if plane else "KYX")
            shape = tuple(lengths[a] for a in stored)
            zarr = output_format == "zarr"
            tmp = outputs.enter_context(atomic_path(targets[kind], directory=zarr))
            if zarr:
                from hazematching.ngff import create_ome_zarr

                array = create_ome_zarr(tmp, shape, stored.replace("N", plane), sizes,
                                        name=targets[kind].name.split(".")[0])
            else:
                file_axes = "TZYX" if kind == "samples" else out_axes
                array = create_tiff(tmp, shape, file_axes, pixel_sizes=sizes)
                outputs.callback(array.close)
            views[kind] = AxesView(array, stored, "NKYX" if kind == "samples" else "NYX")
            if staged is not None:
                staged[kind] = (tmp, stored)
        return views

    @staticmethod
    def _open_staged(staged: dict[str, tuple[Path, str]]) -> dict[str, AxesView]:
        """Views, as :meth:`_create_outputs` returns them, of the OME-Zarr outputs that
        another process of the run created (`staged` as it filled it)."""
        from hazematching.ngff import reopen_created

        return {kind: AxesView(reopen_created(tmp), stored,
                               "NKYX" if kind == "samples" else "NYX")
                for kind, (tmp, stored) in staged.items()}

    def predict_file(self, path: str | Path, out_dir: str | Path, *, axes: str | None = None,
                     channels: list[int] | None = None, n_samples: int | None = None,
                     save_samples: bool = False, overwrite: bool = False,
                     device: str | None = "auto", progress: bool = False,
                     progress_callback: ProgressCallback | None = None,
                     output_format: OutputFormat = "tiff", stem: str | None = None
                     ) -> dict[str, Path]:
        """Dehaze one TIFF or OME-Zarr image; write the outputs named by :meth:`output_paths`
        into `out_dir`.

        Args:
            path: input TIFF or ``.zarr``/``.ome.zarr`` folder; axes from `axes` or the file.
            channels: indices along the file's C axis to use as input, e.g. ``[1]`` for the
                widefield channel of a paper-layout pair, or one colour of an RGB file
                (default: every channel; their number must be the model's).
            n_samples: posterior samples; with 1 no std is written.
            progress_callback: as for :meth:`predict`; an exception it raises stops the work
                before any output exists under its final name (the partly written outputs
                are removed).
            output_format: 'tiff' (ImageJ TIFFs) or 'zarr' (OME-Zarr, NGFF 0.4, chunked
                1 × 256 × 256 per plane); either keeps the input's axes and pixel sizes.
            stem: name the outputs ``<stem>_<kind>`` (default: after the input).

        The image is streamed: read a band of tile rows at a time and every output written
        as its rows are done (:func:`~hazematching.predict.predict_planes`), so memory stays a
        few bands whatever the image size. Each output is written under a temporary name in
        `out_dir` and renamed when complete, ``<stem>_mmse`` last: when it exists, its
        companions are complete. It is never replaced unless `overwrite`; companions without
        it are left-overs of an interrupted run and are replaced. `out_dir` is locked meanwhile
        (:func:`folder_lock`). Returns the written paths by kind.
        """
        self._require_trained()
        check_device(device)
        path, out_dir = Path(path), Path(out_dir)
        S = self.n_samples_for(n_samples)
        targets = self.output_paths(path, out_dir, n_samples=S, save_samples=save_samples,
                                    output_format=output_format, stem=stem)
        with folder_lock(out_dir, "these predictions"):
            if targets["mmse"].exists() and not overwrite:
                raise FileExistsError(f"{targets['mmse']} exists; pass overwrite=True (CLI: "
                                      f"--overwrite) or choose another output folder")
            remove_stale_partials(targets.values())
            with open_image(path, axes) as image, contextlib.ExitStack() as outputs:
                planes = self._input_planes(image, channels)
                sinks = self._create_outputs(outputs, targets, image, planes.shape[0], S,
                                             output_format)
                self._predict_planes(planes, S, device, sinks.get("samples"), progress,
                                     progress_callback, mean_out=sinks["mmse"],
                                     std_out=sinks.get("std"))
        return targets

    def predict_files(self, paths: Sequence[str | Path], out_dir: str | Path, *,
                      axes: str | None = None, channels: list[int] | None = None,
                      n_samples: int | None = None, save_samples: bool = False,
                      overwrite: bool = False, device: str | None = "auto",
                      progress: bool = False, progress_callback: ProgressCallback | None = None,
                      devices: int | str | list[int] | None = None, num_nodes: int = 1,
                      strategy: str = "auto", accelerator: str = "auto",
                      output_format: OutputFormat = "tiff", stem: str | None = None
                      ) -> Iterator[FileResult]:
        """Dehaze many images (TIFF or OME-Zarr) into `out_dir`, resuming an interrupted run:
        yields one :class:`FileResult` per input as it is done.

        Every input is checked to exist, and no two may write the same output name, before
        anything is computed. `out_dir` is locked for the whole run. An input whose outputs
        all exist is skipped (unless `overwrite`); one whose ``_mmse.tif`` exists but whose
        other outputs do not (another run's options) is an error, raised before any work.
        Arguments as :meth:`predict_file`; `progress_callback` counts the work of each input
        anew (from 0 to that input's total).

        With `devices` (and `num_nodes`, `strategy`, `accelerator`), the inputs are spread
        over processes started as Lightning training starts them
        (:func:`hazematching.distributed.start`): on one machine this command or script is run
        once more per extra device; under torchrun or srun, give the devices per node and the
        nodes they started. Rank 0 locks `out_dir` for the whole run and decides which inputs
        remain; these are dealt round robin, each process predicting whole files on its own
        device (`device` must stay 'auto'; the progress bar shows on rank 0 only). The noise
        depends on (seed, plane, sample, pixel) only, so the outputs are one process's. Rank 0
        yields every input's result, its own as they are done and the other ranks' once all
        are done; the other ranks yield their own. An error stops its rank only: the others
        finish their files, then rank 0 raises
        :class:`~hazematching.distributed.RankFailedError` quoting it.

        With OME-Zarr output (``output_format="zarr"``), images of two planes or more (Z, T
        or S) are instead split by planes: first, one at a time, every process predicts its
        contiguous share of the image's planes into the same outputs (rank 0 creates them
        under temporary names and renames them when all are done; one chunk holds one plane,
        so each is written by one process), giving one result per rank that had planes (its
        :attr:`FileResult.planes`); an error there stops every rank. Not for methods whose
        noise is drawn in sequence rather than per (plane, sample, pixel) (LVAE), and not for
        TIFF output (one file, one writer): those images are dealt whole.
        """
        from hazematching import distributed

        self._require_trained()
        check_device(device)
        if devices is not None and device not in (None, "auto"):
            raise ValueError(f"device={device!r} is the one device of a single process; with "
                             f"devices={devices!r} each process takes its own: choose their "
                             f"kind with accelerator (CLI: --accelerator gpu) instead")
        S = self.n_samples_for(n_samples)
        plan: dict[Path, dict[str, Path]] = {}
        by_output: dict[Path, Path] = {}
        seen: set[Path] = set()
        for p in map(Path, paths):
            if p.resolve() in seen:
                continue
            seen.add(p.resolve())
            if not (p.is_file() or is_zarr_path(p)):
                raise ImageError(f"{p}: no such file")
            plan[p] = self.output_paths(p, out_dir, n_samples=S, save_samples=save_samples,
                                        output_format=output_format, stem=stem)
            first = by_output.setdefault(plan[p]["mmse"], p)
            if first != p:
                raise ValueError(f"{first} and {p} would both be written as "
                                 f"{plan[p]['mmse']}; predict them into separate output "
                                 f"folders")
        ranks = distributed.start(devices, num_nodes=num_nodes, strategy=strategy,
                                  accelerator=accelerator)
        mine: list[FileResult] = []
        error: BaseException | None = None
        with ranks.folder_lock(out_dir, "these predictions"):
            todo = ranks.from_rank_zero(lambda: self._finished_inputs(plan, overwrite))
            pending = [p for p, _, finished in todo if not finished]
            split = ranks.from_rank_zero(lambda: self._split_by_planes(
                pending, ranks.world_size, output_format, axes, channels))
            whole = [p for p in pending if p not in split]
            owned = {p for i, p in enumerate(whole) if ranks.owns(i)}
            try:
                # Every rank together, in the same order: each of these takes collective steps.
                # Reported once all are done, so that a caller stopping early cannot leave the
                # other ranks waiting in one.
                shared: list[FileResult] = []
                for p in split:
                    with _processing(p):
                        share = self._predict_file_by_planes(
                            p, plan[p], ranks, axes=axes, channels=channels, n_samples=S,
                            device=ranks.device or device, progress=progress and ranks.rank == 0,
                            progress_callback=progress_callback)
                    if share:
                        shared.append(FileResult(p, plan[p], skipped=False, rank=ranks.rank,
                                                 planes=share))
                mine.extend(shared)
                yield from shared
                for p, targets, finished in todo:
                    if finished:
                        if ranks.rank == 0:
                            yield FileResult(p, targets, skipped=True)
                        continue
                    if p not in owned:  # another rank's, or split by planes above
                        continue
                    with _processing(p):
                        written = self.predict_file(
                            p, out_dir, axes=axes, channels=channels, n_samples=S,
                            save_samples=save_samples, overwrite=True,
                            device=ranks.device or device, progress=progress and ranks.rank == 0,
                            progress_callback=progress_callback, output_format=output_format,
                            stem=stem)
                    mine.append(FileResult(p, written, skipped=False, rank=ranks.rank))
                    yield mine[-1]
            # Kept for after the lock: the other ranks wait for this one's report. GeneratorExit:
            # the caller stopped iterating.
            except (Exception, GeneratorExit) as err:
                error = err
        reports = ranks.gather((mine, None if error is None else distributed.describe(error)))
        if error is not None:
            raise error
        if ranks.rank == 0:
            for theirs, _ in reports[1:]:
                yield from theirs
            failed = [f"rank {r} of {ranks.world_size} failed: {why}"
                      for r, (_, why) in enumerate(reports) if why]
            if failed:
                raise distributed.RankFailedError(
                    "; ".join(failed) + "; the outputs written are complete: run the same "
                    "command again to predict the rest")

    def _split_by_planes(self, pending: list[Path], world_size: int,
                         output_format: OutputFormat, axes: str | None,
                         channels: list[int] | None) -> list[Path]:
        """The inputs of `pending` whose planes the ranks share: with several ranks, OME-Zarr
        output (one chunk never spans two planes, so each rank writes whole chunks) and a
        method whose outputs depend on (seed, plane, sample, pixel) only, those with at least
        two planes. The others are predicted whole, one rank each."""
        if world_size == 1 or output_format != "zarr" or (
                self.method.stochastic and not self.method.takes_noise):
            return []
        split = []
        for p in pending:
            try:
                with open_image(p, axes) as image:
                    n_planes = self._input_planes(image, channels).shape[0]
            except (ValueError, OSError):  # its rank meets the error when it predicts it whole
                continue
            if n_planes >= 2:
                split.append(p)
        return split

    def _predict_file_by_planes(self, path: Path, targets: dict[str, Path],
                                ranks: Ranks, *, axes: str | None,
                                channels: list[int] | None, n_samples: int, device: str | None,
                                progress: bool, progress_callback: ProgressCallback | None
                                ) -> tuple[int, ...]:
        """Predict one image into the OME-Zarr outputs `targets` with every rank of `ranks`,
        each its contiguous share of the planes; return this rank's planes (indices into the
        image's N planes; none when there are fewer planes than ranks).

        Rank 0 creates the outputs under temporary names; every rank writes its planes' chunks
        into them; once all have, rank 0 renames them into place, the MMSE last. If any rank
        fails, nothing is renamed and every rank raises (its own error, or
        :class:`~hazematching.distributed.RankFailedError`). Every rank calls it alike,
        holding the output folder's lock (:meth:`Ranks.folder_lock`)."""
        with contextlib.ExitStack() as opened:
            error: Exception | None = None
            try:
                image = opened.enter_context(open_image(path, axes))
                planes = self._input_planes(image, channels)
            except Exception as err:  # noqa: BLE001 - every rank must learn of any failure
                error = err
            ranks.raise_if_any_failed(error)
            N = planes.shape[0]
            share = tuple(int(n) for n in
                          np.array_split(np.arange(N), ranks.world_size)[ranks.rank])
            with contextlib.ExitStack() as outputs:
                views: dict[str, AxesView] = {}

                def stage() -> dict[str, tuple[Path, str]]:
                    remove_stale_partials(targets.values())
                    staged: dict[str, tuple[Path, str]] = {}
                    views.update(self._create_outputs(outputs, targets, image, N, n_samples,
                                                      "zarr", staged=staged))
                    return staged

                staged = ranks.from_rank_zero(stage)
                try:
                    sinks = views if ranks.rank == 0 else self._open_staged(staged)
                    if share:
                        self._predict_planes(planes, n_samples, device, sinks.get("samples"),
                                             progress, progress_callback,
                                             mean_out=sinks["mmse"], std_out=sinks.get("std"),
                                             plane_indices=share)
                except Exception as err:  # noqa: BLE001 - every rank must learn of any failure
                    error = err
                ranks.raise_if_any_failed(error)
        return share

    @staticmethod
    def _finished_inputs(plan: dict[Path, dict[str, Path]], overwrite: bool
                         ) -> list[tuple[Path, dict[str, Path], bool]]:
        """`plan`'s inputs and outputs in order, each marked finished when its outputs all
        exist (never with `overwrite`); a killed run's temporary files of finished inputs are
        removed. Call it holding the output folder's lock.

        Raises:
            FileExistsError: an input's ``_mmse.tif`` exists but its other outputs do not.
        """
        todo = []
        for p, targets in plan.items():
            finished = targets["mmse"].exists() and not overwrite
            if finished:
                missing = [t.name for t in targets.values() if not t.exists()]
                if missing:
                    raise FileExistsError(
                        f"{targets['mmse']} exists but {', '.join(missing)} does not (an "
                        f"earlier run with other options); pass --overwrite (Python: "
                        f"overwrite=True) to predict {p} again")
                remove_stale_partials(targets.values())
            todo.append((p, targets, finished))
        return todo

    # ------------------------------------------------------------- calibration
    def calibrate(self, val: str | Path | PairedImages, *, n_samples: int | None = None,
                  n_bins: int = 50, kind: cal.CalibrationKind | None = None,
                  device: str | None = "auto", plot: str | Path | None = None,
                  save: bool = True, progress: bool = False) -> CalibrationReport:
        """Fit the std calibration on validation pairs (RMSE vs RMV) and store it with the model.

        Args:
            val: validation folder (either layout) or loaded pairs, raw units.
            n_samples: posterior samples per pixel, at least 2 (their spread is the std).
            n_bins: equal-width std bins.
            kind: 'linear' (σ_cal = a·σ + b) or 'monotone' (the increasing curve through the
                bins); default ``training.calibrator``.
            plot: optional PNG path for the RMSE-vs-RMV plot before/after.
            save: rewrite the model directory's model.json with the calibration.
        """
        if not self.method.stochastic:
            raise ValueError(f"method {self.config.method!r} is deterministic: it has no "
                             f"uncertainty to calibrate")
        norm = self._require_trained()
        check_device(device)
        kind = kind or self.config.training.calibrator
        cal.check_kind(kind)  # before the predictions, not after them
        S = self.n_samples_for(n_samples)
        if S < 2:
            raise ValueError(f"calibration needs the spread of at least 2 posterior samples per "
                             f"pixel, got n_samples={S} (CLI: --n-samples 2 or more)")
        pairs = val if isinstance(val, PairedImages) else load_pairs(
            val, self.config.data.layout, self.config.data.axes)
        # Images of one size are predicted as one stack, so that batches stay full.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(pairs.targets):
            by_shape.setdefault(t.shape[1:], []).append(i)
        stds, errs, owner = [], [], []  # per plane: std, error, index of its image
        for idx in by_shape.values():
            owner.extend(i for i in idx for _ in range(pairs.targets[i].shape[0]))
            x = np.concatenate([pairs.inputs[i] for i in idx])
            t = np.concatenate([pairs.targets[i] for i in idx])
            res = predict_planes(self.method, norm.normalize_input(x), self.config.sampling,
                                 n_samples=S, device=device, progress=progress)
            stds.extend(res.std)
            errs.extend(res.mean - norm.normalize_target(t))
        std = np.concatenate([s.ravel() for s in stds])
        err = np.concatenate([e.ravel() for e in errs])
        before = cal.calibration_curve(std, err, n_bins)
        fitted = cal.fit(std, err, n_bins, kind, fitted_for=self.config.sampling.estimator(S),
                         curve=before)
        after = cal.calibration_curve(fitted.apply(std), err, n_bins)
        self.calibration = fitted
        if plot is not None:
            cal.plot_calibration({"uncalibrated": before, "calibrated": after}, plot)
        if save and self.path is not None:
            self.save(self.path)
        return CalibrationReport(fitted, cal.ence(before), cal.ence(after), before, after,
                                 cal.heldout_ence(stds, errs, n_bins, kind, images=owner))

    # ----------------------------------------------------------------- storage
    def save(self, path: str | Path) -> Path:
        """Write the model directory (see :mod:`hazematching.model_io`), holding its lock."""
        with folder_lock(path, "saving a model"):
            self.path = save_model(path, self.method, self._require_trained(), self.calibration,
                                   extra=self.provenance)
        return self.path


class HazeMatching(Model):
    """A :class:`Model` whose method is HazeMatching (the default)."""

    def __init__(self, config: ModelConfig | None = None):
        config = config or ModelConfig()
        if config.method != "hazematching":
            raise ValueError(f"HazeMatching needs config.method='hazematching', got "
                             f"{config.method!r}; use Model(config) for other methods")
        super().__init__(config)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """Load a model directory or ``.zip`` archive written by :meth:`Model.save`/``fit``."""
    from hazematching.model_io import ModelMeta

    loaded = load_model_files(path, device)
    provenance = {k: v for k, v in loaded.meta.items()
                  if k not in ModelMeta.model_fields or k in _PROVENANCE_FIELDS}
    return Model(loaded.config, method=loaded.method, normalizer=loaded.normalizer,
                 calibration=loaded.calibration, path=Path(path) if Path(path).is_dir() else None,
                 provenance=provenance)


@contextlib.contextmanager
def _processing(path: Path) -> Iterator[None]:
    """Add "while processing <path>" to an exception raised inside (the CLI's crash guard
    names the input from it)."""
    try:
        yield
    except Exception as err:
        err.add_note(f"while processing {path}")
        raise


#: model.json fields that describe how the model was made (see :attr:`Model.provenance`).
_PROVENANCE_FIELDS = ("best_checkpoint", "val_loss", "epochs", "steps")
#: Side (px) of the validation crops the calibration after training predicts: the paper's tile.
_CALIBRATION_CROP = 128


def _best_score(trainer) -> float | None:
    cb = trainer.checkpoint_callback
    score = getattr(cb, "best_model_score", None)
    return float(score) if score is not None else None
