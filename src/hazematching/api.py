"""The Python API: ``HazeMatching(config).fit(...)``, ``model.predict(...)``, ``load_model(...)``.

Every method (HazeMatching and the baselines) goes through the same :class:`Model`.
"""

from __future__ import annotations

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
from hazematching.io import atomic_path, from_planes, read_image, to_planes, write_tiff
from hazematching.methods import build_method
from hazematching.methods.base import Method
from hazematching.model_io import load_model_files, save_model
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
class CalibrationReport:
    """Outcome of :meth:`Model.calibrate`: the fit and ENCE before/after on the given data."""

    calibration: cal.Calibration
    ence_before: float
    ence_after: float
    curve_before: cal.CalibrationCurve
    curve_after: cal.CalibrationCurve


class Model:
    """A restoration model: method + normalisation + calibration, trained or loaded.

    ``Model(config)`` is untrained; :func:`load_model` passes the stored method (with its
    weights), normalisation, calibration and directory.
    """

    def __init__(self, config: ModelConfig | None = None, *, method: Method | None = None,
                 normalizer: Normalizer | None = None,
                 calibration: cal.Calibration | None = None, path: Path | None = None):
        self.config = config or ModelConfig()
        self.method: Method = method if method is not None else build_method(self.config)
        self.normalizer = normalizer
        self.calibration = calibration
        self.path = path
        #: After :meth:`fit`: steps, epochs, best validation loss, this process's rank.
        self.training_summary: dict = {}

    # ---------------------------------------------------------------- training
    def fit(self, train: str | Path | PairedImages | None = None,
            val: str | Path | PairedImages | None = None, *, out_dir: str | Path,
            resume: bool = True) -> Model:
        """Train on paired images and save the model directory to `out_dir`.

        Args:
            train: a folder (either layout, or a dataset root with train/ + val/ or
                train_crop/ + val_crop/), or loaded pairs; default ``config.data.train_dir``.
            val: validation folder or pairs; default ``config.data.val_dir``, else a held-out
                fraction (``config.data.val_fraction``) of the training images.
            out_dir: the model directory; checkpoints and logs go inside it.
            resume: continue from ``out_dir/checkpoints/last.ckpt`` if present.
        """
        from hazematching.training import fit as train_loop

        d = self.config.data
        train_pairs, val_pairs = self._load_training_pairs(train, val)
        self.normalizer = Normalizer.fit(train_pairs.targets, train_pairs.inputs,
                                         d.normalization, d.percentiles)
        n_ch = train_pairs.inputs[0].shape[1]
        if n_ch != self.config.in_channels:
            raise ValueError(f"the data have {n_ch} input channel(s) but config.in_channels is "
                             f"{self.config.in_channels}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.method.trainable:
            train_ds = RandomPatches(train_pairs, self.normalizer, d.patch_size,
                                     length=d.patches_per_epoch, augment=d.augment,
                                     seed=self.config.training.seed)
            val_ds = FixedPatches(val_pairs, self.normalizer, d.patch_size)
            trainer, best = train_loop(self.method, train_ds, val_ds, self.config.training, out,
                                       num_workers=d.num_workers, resume=resume)
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
            save_model(out, self.method, self.normalizer, self.calibration, extra=extra)
            self.path = out
        return self

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

    def predict(self, image: np.ndarray, axes: str = "YX", *, n_samples: int | None = None,
                return_samples: bool = False, device: str | None = "auto",
                progress: bool = False) -> Prediction:
        """Dehaze an image of any size.

        Args:
            image: raw widefield image (any real dtype) with dimensions named by `axes`
                ('YX', 'ZYX', 'TYX', 'SYX', or with C for several input channels).
            n_samples: posterior samples (default ``config.sampling.n_samples``).
            return_samples: also return the samples (memory grows with n_samples).
            device: 'auto' (GPU if available), 'cpu', 'cuda', ….
        """
        norm = self._require_trained()
        planes = norm.normalize_input(to_planes(np.asarray(image), axes))
        s = self.config.sampling
        S = (n_samples or s.n_samples) if self.method.stochastic else 1
        samples = None
        if return_samples:
            samples = np.zeros((planes.shape[0], S, *planes.shape[2:]), np.float32)
        res = predict_planes(self.method, planes, s, n_samples=S, device=device,
                             samples_out=samples, progress=progress)
        mmse, std = self._to_output_units(res.mean, res.std)
        out_axes = axes.upper().replace("C", "")
        if samples is not None:
            samples = norm.denormalize_target(samples)
            samples = np.moveaxis(samples, 1, 0)
            samples = samples[:, 0] if out_axes == "YX" else samples
        return Prediction(mmse=from_planes(mmse, axes.upper()),
                          std=None if std is None else from_planes(std, axes.upper()),
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

    def _to_output_units(self, mean: np.ndarray, std: np.ndarray | None
                         ) -> tuple[np.ndarray, np.ndarray | None]:
        norm = self._require_trained()
        if std is not None and self.calibration is not None:
            std = self.calibration.apply(std)
        return norm.denormalize_target(mean), None if std is None else std * np.float32(
            norm.target.scale)

    def predict_file(self, path: str | Path, out_dir: str | Path, *, axes: str | None = None,
                     channels: list[int] | None = None, n_samples: int | None = None,
                     save_samples: bool = False, overwrite: bool = False,
                     device: str | None = "auto", progress: bool = False) -> dict[str, Path]:
        """Dehaze one TIFF; write ``<stem>_mmse.tif``, ``<stem>_std.tif`` (stochastic methods)
        and ``<stem>_samples.tif`` (if asked) into `out_dir`.

        Args:
            path: input TIFF; axes from `axes` or the file.
            channels: indices along the file's C axis to use as input, e.g. ``[1]`` for the
                widefield channel of a paper-layout pair (default: every channel).

        Existing outputs are never replaced unless `overwrite`. Samples are streamed into a
        memory-mapped TIFF, so memory does not grow with them. Returns the written paths by kind.
        """
        norm = self._require_trained()
        path, out_dir = Path(path), Path(out_dir)
        image, axes = read_image(path, axes)
        if channels is not None:
            if "C" not in axes:
                raise ValueError(f"{path}: channels={channels} given but the image has no C "
                                 f"axis (axes {axes!r})")
            c_axis, n_c = axes.index("C"), image.shape[axes.index("C")]
            if any(not 0 <= c < n_c for c in channels):
                raise ValueError(f"{path}: channels {channels} out of range for {n_c} channels")
            image = np.take(image, channels, axis=c_axis)
        stem = path.name.split(".")[0]
        kinds = ["mmse"] + (["std"] if self.method.stochastic else [])
        kinds += ["samples"] if save_samples and self.method.stochastic else []
        targets = {k: out_dir / f"{stem}_{k}.tif" for k in kinds}
        for t in targets.values():
            if t.exists() and not overwrite:
                raise FileExistsError(f"{t} exists; pass overwrite=True (CLI: --overwrite) or "
                                      f"choose another output folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        planes = norm.normalize_input(to_planes(image, axes))
        s = self.config.sampling
        S = (n_samples or s.n_samples) if self.method.stochastic else 1
        out_axes = axes.replace("C", "")
        if "samples" in targets:
            N, _, H, W = planes.shape
            with atomic_path(targets["samples"]) as tmp:
                mm = tifffile.memmap(tmp, shape=(S, N, H, W), dtype=np.float32, imagej=True,
                                     metadata={"axes": "TZYX"})
                res = predict_planes(self.method, planes, s, n_samples=S, device=device,
                                     samples_out=mm.transpose(1, 0, 2, 3), progress=progress)
                for i in range(S):
                    mm[i] = norm.denormalize_target(mm[i])
                mm.flush()
                del mm
        else:
            res = predict_planes(self.method, planes, s, n_samples=S, device=device,
                                 progress=progress)
        mmse, std = self._to_output_units(res.mean, res.std)
        write_tiff(targets["mmse"], from_planes(mmse, axes), out_axes)
        if std is not None:
            write_tiff(targets["std"], from_planes(std, axes), out_axes)
        return targets

    # ------------------------------------------------------------- calibration
    def calibrate(self, val: str | Path | PairedImages, *, n_samples: int | None = None,
                  n_bins: int = 50, device: str | None = "auto", plot: str | Path | None = None,
                  save: bool = True, progress: bool = False) -> CalibrationReport:
        """Fit σ_cal = a·σ + b on validation pairs (RMSE vs RMV) and store it with the model.

        Args:
            val: validation folder (either layout) or loaded pairs, raw units.
            n_bins: equal-width std bins.
            plot: optional PNG path for the RMSE-vs-RMV plot before/after.
            save: rewrite the model directory's model.json with the calibration.
        """
        if not self.method.stochastic:
            raise ValueError(f"method {self.config.method!r} is deterministic: it has no "
                             f"uncertainty to calibrate")
        norm = self._require_trained()
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
                                 n_samples=n_samples, device=device, progress=progress)
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
            save_model(self.path, self.method, norm, fitted)
        return CalibrationReport(fitted, cal.ence(before), cal.ence(after), before, after)

    # ----------------------------------------------------------------- storage
    def save(self, path: str | Path) -> Path:
        """Write the model directory (see :mod:`hazematching.model_io`)."""
        self.path = save_model(path, self.method, self._require_trained(), self.calibration)
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
    loaded = load_model_files(path, device)
    return Model(loaded.config, method=loaded.method, normalizer=loaded.normalizer,
                 calibration=loaded.calibration, path=Path(path) if Path(path).is_dir() else None)


def _best_score(trainer) -> float | None:
    cb = trainer.checkpoint_callback
    score = getattr(cb, "best_model_score", None)
    return float(score) if score is not None else None
