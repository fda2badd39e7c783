"""The Python API: ``HazeMatching(config).fit(...)``, ``model.predict(...)``, ``load_model(...)``.

Every method (HazeMatching and the baselines) goes through the same :class:`Model`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch

from hazematching import calibration as cal
from hazematching.config import ModelConfig
from hazematching.data.normalization import Normalizer
from hazematching.data.pairs import PairedImages, load_pairs, resolve_split_dirs
from hazematching.data.patches import FixedPatches, RandomPatches
from hazematching.io import (
    ImageError,
    atomic_path,
    folder_lock,
    from_planes,
    read_image,
    remove_stale_partials,
    reserve_space,
    to_planes,
    write_tiff,
)
from hazematching.methods import build_method
from hazematching.methods.base import Method
from hazematching.model_io import META_FILE, MODEL_FILES, load_model_files, save_model
from hazematching.predict import predict_planes


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
    """One input of :meth:`Model.predict_files`: its outputs by kind (mmse, std, samples), and
    whether they already existed from an earlier run (then nothing was computed)."""

    source: Path
    outputs: dict[str, Path]
    skipped: bool


@dataclass
class CalibrationReport:
    """Outcome of :meth:`Model.calibrate`: the fit and ENCE before/after on the given data."""

    calibration: cal.Calibration
    ence_before: float
    ence_after: float
    curve_before: cal.CalibrationCurve
    curve_after: cal.CalibrationCurve


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
        self.method: Method = method if method is not None else build_method(self.config)
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
            resume: bool = True, overwrite: bool = False) -> Model:
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

        Raises:
            ValueError: invalid trainer settings (checked before anything is read), bad data,
                a checkpoint that cannot be resumed from.
            FileExistsError: `out_dir` holds a finished model and neither `resume` applies
                nor `overwrite` is given.
            FolderInUseError: another process is training into `out_dir`.
        """
        from hazematching.training import check_settings
        from hazematching.training import fit as train_loop

        if self.method.trainable:
            check_settings(self.config.training)
        out = Path(out_dir)
        with self._claim_model_dir(out, resume=resume, overwrite=overwrite):
            d = self.config.data
            train_pairs, val_pairs = self._load_training_pairs(train, val)
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
                                           out, num_workers=d.num_workers, resume=resume)
                is_zero = trainer.is_global_zero
                extra = {"best_checkpoint": best.name if best else None,
                         "val_loss": _best_score(trainer), "epochs": trainer.current_epoch,
                         "steps": trainer.global_step}
                self.training_summary = {**extra, "global_rank": trainer.global_rank,
                                         "world_size": trainer.world_size,
                                         "batches_per_epoch": len(trainer.train_dataloader)}
            else:
                is_zero, extra = True, {}
            if is_zero:
                self.provenance = extra
                save_model(out, self.method, self.normalizer, self.calibration, extra=extra)
                self.path = out
        return self

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

    def _predict_planes(self, planes: np.ndarray, n_samples: int, device: str | None,
                        samples_out: np.ndarray | None, progress: bool
                        ) -> tuple[np.ndarray, np.ndarray | None]:
        """The one prediction path: raw planes (N, C, Y, X) → MMSE and std (N, Y, X) in target
        intensity units (std calibrated if the model is; None for one sample or a deterministic
        method). `samples_out` (N, S, Y, X), if given, receives the samples in target units."""
        norm = self._require_trained()
        res = predict_planes(self.method, norm.normalize_input(planes), self.config.sampling,
                             n_samples=n_samples, device=device, samples_out=samples_out,
                             progress=progress)
        if samples_out is not None:
            for i in range(n_samples):  # one sample at a time: memory stays one sample's
                samples_out[:, i] = norm.denormalize_target(samples_out[:, i])
        std = res.std
        if std is not None and self.calibration is not None:
            std = self.calibration.apply(std)
        return norm.denormalize_target(res.mean), None if std is None else std * np.float32(
            norm.target.scale)

    def predict(self, image: np.ndarray, axes: str = "YX", *, n_samples: int | None = None,
                return_samples: bool = False, device: str | None = "auto",
                progress: bool = False) -> Prediction:
        """Dehaze an image of any size.

        Args:
            image: raw widefield image (any real dtype) with dimensions named by `axes`
                ('YX', 'ZYX', 'TYX', 'SYX', or with C for several input channels).
            n_samples: posterior samples (default ``config.sampling.n_samples``); with 1 there
                is no spread, so ``std`` is None.
            return_samples: also return the samples (memory grows with n_samples).
            device: 'auto' (GPU if available), 'cpu', 'cuda', ….
        """
        self._require_trained()
        check_device(device)
        S = self.n_samples_for(n_samples)
        planes = to_planes(np.asarray(image), axes)
        N, _, H, W = planes.shape
        samples = np.zeros((N, S, H, W), np.float32) if return_samples else None
        mmse, std = self._predict_planes(planes, S, device, samples, progress)
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
        a change that alters the network (its shapes) is refused.
        """
        config = self.config.with_overrides(overrides, source="reconfigure")
        method = build_method(config)
        try:
            method.load_state_dict(self.method.state_dict())
        except RuntimeError as err:
            raise ValueError(f"these changes alter the network, retrain instead: {err}") from None
        self.config, self.method = config, method.eval()
        return self

    def output_paths(self, path: str | Path, out_dir: str | Path, *,
                     n_samples: int | None = None, save_samples: bool = False
                     ) -> dict[str, Path]:
        """Where :meth:`predict_file` writes the outputs of `path`, by kind: ``mmse`` always,
        ``std`` for stochastic methods with at least 2 samples, ``samples`` if asked. The stem
        is the file name up to its first dot."""
        S = self.n_samples_for(n_samples)
        stem = Path(path).name.split(".")[0]
        kinds = ["mmse"] + (["std"] if self.method.stochastic and S > 1 else [])
        kinds += ["samples"] if save_samples and self.method.stochastic else []
        return {k: Path(out_dir) / f"{stem}_{k}.tif" for k in kinds}

    def _select_channels(self, image: np.ndarray, axes: str, channels: list[int] | None,
                         path: Path) -> np.ndarray:
        n_c = image.shape[axes.index("C")] if "C" in axes else 1
        if channels is not None:
            if "C" not in axes:
                raise ValueError(f"{path}: channels={channels} given but the image has no C "
                                 f"axis (axes {axes!r})")
            if any(not 0 <= c < n_c for c in channels):
                raise ValueError(f"{path}: channels {channels} out of range for {n_c} channels")
            image, n_c = np.take(image, channels, axis=axes.index("C")), len(channels)
        if n_c != self.config.in_channels:
            raise ImageError(f"{path}: has {n_c} channel(s) (axes {axes}, shape {image.shape}; "
                             f"an RGB file has one per colour) but the model takes "
                             f"{self.config.in_channels}; choose with --channel (Python: "
                             f"channels=[...]), e.g. --channel 1 for the widefield channel of "
                             f"a paper-layout pair")
        return image

    def predict_file(self, path: str | Path, out_dir: str | Path, *, axes: str | None = None,
                     channels: list[int] | None = None, n_samples: int | None = None,
                     save_samples: bool = False, overwrite: bool = False,
                     device: str | None = "auto", progress: bool = False) -> dict[str, Path]:
        """Dehaze one TIFF; write the files named by :meth:`output_paths` into `out_dir`.

        Args:
            path: input TIFF; axes from `axes` or the file.
            channels: indices along the file's C axis to use as input, e.g. ``[1]`` for the
                widefield channel of a paper-layout pair, or one colour of an RGB file
                (default: every channel; their number must be the model's).
            n_samples: posterior samples; with 1 no std is written.

        ``<stem>_mmse.tif`` is written last: when it exists, its companions are complete. It is
        never replaced unless `overwrite`; companions without it are left-overs of an
        interrupted run and are replaced. Samples are streamed into a memory-mapped TIFF, so
        memory does not grow with them. `out_dir` is locked meanwhile (:func:`folder_lock`).
        Returns the written paths by kind.
        """
        self._require_trained()
        check_device(device)
        path, out_dir = Path(path), Path(out_dir)
        S = self.n_samples_for(n_samples)
        targets = self.output_paths(path, out_dir, n_samples=S, save_samples=save_samples)
        with folder_lock(out_dir, "these predictions"):
            if targets["mmse"].exists() and not overwrite:
                raise FileExistsError(f"{targets['mmse']} exists; pass overwrite=True (CLI: "
                                      f"--overwrite) or choose another output folder")
            remove_stale_partials(targets.values())
            image, axes = read_image(path, axes)
            planes = to_planes(self._select_channels(image, axes, channels, path), axes)
            out_axes = axes.replace("C", "")
            if "samples" in targets:
                N, _, H, W = planes.shape
                with atomic_path(targets["samples"]) as tmp:
                    mm = tifffile.memmap(tmp, shape=(S, N, H, W), dtype=np.float32, imagej=True,
                                         metadata={"axes": "TZYX"})
                    reserve_space(tmp)
                    mmse, std = self._predict_planes(planes, S, device, mm.transpose(1, 0, 2, 3),
                                                     progress)
                    mm.flush()
                    del mm
            else:
                mmse, std = self._predict_planes(planes, S, device, None, progress)
            if std is not None:
                write_tiff(targets["std"], from_planes(std, axes), out_axes)
            write_tiff(targets["mmse"], from_planes(mmse, axes), out_axes)
        return targets

    def predict_files(self, paths: Sequence[str | Path], out_dir: str | Path, *,
                      axes: str | None = None, channels: list[int] | None = None,
                      n_samples: int | None = None, save_samples: bool = False,
                      overwrite: bool = False, device: str | None = "auto",
                      progress: bool = False) -> Iterator[FileResult]:
        """Dehaze many TIFFs into `out_dir`, resuming an interrupted run: yields one
        :class:`FileResult` per input as it is done.

        Every input is checked to exist, and no two may write the same output name, before
        anything is computed. `out_dir` is locked for the whole run. An input whose outputs
        all exist is skipped (unless `overwrite`); one whose ``_mmse.tif`` exists but whose
        other outputs do not (another run's options) is an error. Arguments as
        :meth:`predict_file`.
        """
        self._require_trained()
        check_device(device)
        S = self.n_samples_for(n_samples)
        plan: dict[Path, dict[str, Path]] = {}
        by_output: dict[Path, Path] = {}
        seen: set[Path] = set()
        for p in map(Path, paths):
            if p.resolve() in seen:
                continue
            seen.add(p.resolve())
            if not p.is_file():
                raise ImageError(f"{p}: no such file")
            plan[p] = self.output_paths(p, out_dir, n_samples=S, save_samples=save_samples)
            first = by_output.setdefault(plan[p]["mmse"], p)
            if first != p:
                raise ValueError(f"{first} and {p} would both be written as "
                                 f"{plan[p]['mmse']}; predict them into separate output "
                                 f"folders")
        with folder_lock(out_dir, "these predictions"):
            for p, targets in plan.items():
                if targets["mmse"].exists() and not overwrite:
                    missing = [t.name for t in targets.values() if not t.exists()]
                    if missing:
                        raise FileExistsError(
                            f"{targets['mmse']} exists but {', '.join(missing)} does not (an "
                            f"earlier run with other options); pass --overwrite (Python: "
                            f"overwrite=True) to predict {p} again")
                    remove_stale_partials(targets.values())
                    yield FileResult(p, targets, skipped=True)
                    continue
                try:
                    written = self.predict_file(p, out_dir, axes=axes, channels=channels,
                                                n_samples=S, save_samples=save_samples,
                                                overwrite=True, device=device, progress=progress)
                except Exception as err:
                    err.add_note(f"while processing {p}")  # named by the CLI's crash guard
                    raise
                yield FileResult(p, written, skipped=False)

    # ------------------------------------------------------------- calibration
    def calibrate(self, val: str | Path | PairedImages, *, n_samples: int | None = None,
                  n_bins: int = 50, device: str | None = "auto", plot: str | Path | None = None,
                  save: bool = True, progress: bool = False) -> CalibrationReport:
        """Fit σ_cal = a·σ + b on validation pairs (RMSE vs RMV) and store it with the model.

        Args:
            val: validation folder (either layout) or loaded pairs, raw units.
            n_samples: posterior samples per pixel, at least 2 (their spread is the std).
            n_bins: equal-width std bins.
            plot: optional PNG path for the RMSE-vs-RMV plot before/after.
            save: rewrite the model directory's model.json with the calibration.
        """
        if not self.method.stochastic:
            raise ValueError(f"method {self.config.method!r} is deterministic: it has no "
                             f"uncertainty to calibrate")
        norm = self._require_trained()
        check_device(device)
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
        stds, errs = [], []
        for idx in by_shape.values():
            x = np.concatenate([pairs.inputs[i] for i in idx])
            t = np.concatenate([pairs.targets[i] for i in idx])
            res = predict_planes(self.method, norm.normalize_input(x), self.config.sampling,
                                 n_samples=S, device=device, progress=progress)
            stds.append(res.std.ravel())
            errs.append((res.mean - norm.normalize_target(t)).ravel())
        std, err = np.concatenate(stds), np.concatenate(errs)
        before = cal.calibration_curve(std, err, n_bins)
        fitted = cal.Calibration(*cal.fit_calibration(before))
        after = cal.calibration_curve(fitted.apply(std), err, n_bins)
        self.calibration = fitted
        if plot is not None:
            cal.plot_calibration({"uncalibrated": before, "calibrated": after}, plot)
        if save and self.path is not None:
            self.save(self.path)
        return CalibrationReport(fitted, cal.ence(before), cal.ence(after), before, after)

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


#: model.json fields that describe how the model was made (see :attr:`Model.provenance`).
_PROVENANCE_FIELDS = ("best_checkpoint", "val_loss", "epochs", "steps")


def _best_score(trainer) -> float | None:
    cb = trainer.checkpoint_callback
    score = getattr(cb, "best_model_score", None)
    return float(score) if score is not None else None
