"""Evaluation of a set of predictions: every metric, per image and per dataset, as JSON.

Three *variants* of a method's output are scored against the targets:

* ``mmse``: the MMSE (posterior mean) prediction;
* ``sample``: single posterior samples — each metric is computed on every sample and averaged
  over the samples of an image (LPIPS, FID and FSIM, which are slow, on the first
  ``max_perceptual_samples`` samples only; the count used is recorded);
* ``input``: the widefield input itself, as a baseline (when inputs are given).

Per-image values are averaged over images for the dataset value; FID exists only per dataset
(for ``sample``: the FID of the set of s-th samples, averaged over s). A metric that cannot run
here (missing pretrained weights, a missing optional package, images too small) is listed under
``"unavailable"`` with the reason while all other metrics are still computed. Invalid inputs
(shape mismatch, NaN/Inf, constant targets, missing files) raise before anything is computed,
so no partial result is ever written.

Results are plain JSON (see :func:`save_results`); :mod:`hazematching.report` renders tables,
plots and an HTML page from them without recomputing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hazematching.io import ImageError, atomic_path, list_images, read_image
from hazematching.metrics.fidelity import (
    MS_SSIM_MIN_SIZE,
    MicroParams,
    fit_micro,
    psnr_batch,
    ri_psnr_batch,
    structural_batch,
)
from hazematching.metrics.perceptual import (
    PATCH_SIZE,
    FIDScorer,
    LPIPSScorer,
    MetricUnavailableError,
    fsim_batch,
    gmsd_batch,
    tile_patches,
    to_unit_range,
)
from hazematching.metrics.spectral import FRC_THRESHOLD, frc_crossing, power_ratio_from, spectra
from hazematching.metrics.uncertainty import std_from_samples, uncertainty_summary

METRICS = ("psnr", "ri_psnr", "ssim", "ms_ssim", "micro_ssim", "micro_ms3im", "fsim", "gmsd",
           "lpips", "fid", "frc", "power_ratio", "uncertainty")
RESULTS_FORMAT = "hazematching-evaluation"
RESULTS_VERSION = 1
GALLERY_FILE = "gallery.npz"
RESULTS_FILE = "results.json"
_SLOW = ("lpips", "fid", "fsim")  # computed on the first `max_perceptual_samples` samples only
_STRUCTURAL = ("ssim", "ms_ssim", "micro_ssim", "micro_ms3im")


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    names = [m.strip().lower() for m in metrics if m.strip()]
    unknown = sorted(set(names) - set(METRICS))
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or '(none given)'}; choose from "
                         f"{', '.join(METRICS)}")
    return [m for m in METRICS if m in names]


def _as_float(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{what}: expected a numeric image, got dtype {a.dtype}")
    a = a.astype(np.float32 if a.dtype.kind != "f" or a.dtype.itemsize <= 4 else np.float64,
                 copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: contains {int((~np.isfinite(a)).sum())} NaN/Inf value(s)")
    return a


def _validate(pred_mmse: Sequence[np.ndarray], target: Sequence[np.ndarray],
              samples: Sequence[np.ndarray] | None, std: Sequence[np.ndarray] | None,
              inputs: Sequence[np.ndarray] | None, names: list[str],
              ) -> tuple[list, list, list | None, list | None, list | None]:
    n = len(target)
    for label, seq in (("pred_mmse", pred_mmse), ("samples", samples), ("std", std),
                       ("input", inputs)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{label} has {len(seq)} images but there are {n} targets")
    tgt, mmse, smp, sd, inp = [], [], [], [], []
    for i, name in enumerate(names):
        t = _as_float(target[i], f"{name}: target")
        if t.ndim != 2:
            raise ValueError(f"{name}: target must be a 2-D (Y, X) image, got shape {t.shape}")
        if not float(t.max()) > float(t.min()):
            raise ValueError(f"{name}: target is constant (all pixels = {float(t.min())}); "
                             f"PSNR and SSIM need a target with a non-zero intensity range")
        tgt.append(t)
        for label, seq, out in (("MMSE prediction", pred_mmse, mmse), ("std", std, sd),
                                ("input", inputs, inp)):
            if seq is None:
                continue
            a = _as_float(seq[i], f"{name}: {label}")
            if a.shape != t.shape:
                raise ValueError(f"{name}: {label} shape {a.shape} differs from target shape "
                                 f"{t.shape}")
            if label == "std" and float(a.min()) < 0:
                raise ValueError(f"{name}: std has negative values (min {float(a.min())})")
            out.append(a)
        if samples is not None:
            s = _as_float(samples[i], f"{name}: samples")
            if s.ndim != 3 or s.shape[1:] != t.shape or s.shape[0] < 1:
                raise ValueError(f"{name}: samples must be (S, Y, X) with (Y, X) = {t.shape}, "
                                 f"got shape {s.shape}")
            smp.append(s)
    return (tgt, mmse, smp if samples is not None else None, sd if std is not None else None,
            inp if inputs is not None else None)


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of per-image values; None if any is undefined (never a silent partial mean)."""
    if not values or any(v is None for v in values):
        return None
    return _finite_or_none(float(np.mean(values)))


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0


@dataclass
class _VariantScorer:
    """Scores one variant (a list of per-image ``(B, Y, X)`` stacks) with every kept metric."""

    targets: list[np.ndarray]
    names: list[str]
    keep: Callable[[str], bool]
    unavailable: dict[str, str]
    timer: _Timer
    value_range: tuple[float, float] | None
    max_perceptual_samples: int
    frc_threshold: float
    power_cutoff: float
    pixel_size_um: float | None
    lpips: LPIPSScorer | None
    fid: FIDScorer | None

    def score(self, stack: list[np.ndarray]) -> dict[str, Any]:
        """``{"dataset", "per_image", "n_samples"}`` for one variant."""
        per_image: dict[str, list[float | None]] = {}
        counts: dict[str, int] = {}
        n_all = min(len(s) for s in stack)
        n_slow = min(n_all, self.max_perceptual_samples)
        triples = list(zip(stack, self.targets, self.names))

        def record(metric: str, values: list[np.ndarray], n_used: int) -> None:
            per_image[metric] = [_finite_or_none(np.mean(v)) for v in values]
            counts[metric] = n_used

        def run(metric: str, compute: Callable[[], list[np.ndarray]], n_used: int) -> None:
            if not self.keep(metric):
                return
            with self.timer(metric):
                try:
                    record(metric, compute(), n_used)
                except MetricUnavailableError as err:
                    self.unavailable[metric] = str(err)

        vr = self.value_range
        run("psnr", lambda: [psnr_batch(s, t, name=nm) for s, t, nm in triples], n_all)
        run("ri_psnr", lambda: [ri_psnr_batch(s, t, name=nm) for s, t, nm in triples], n_all)
        structural = [m for m in _STRUCTURAL if self.keep(m)]
        if structural:
            with self.timer("ssim_family"):
                micro = None
                if any(m.startswith("micro") for m in structural):
                    micro = _fit_micro_or_skip(self.targets, stack, self.unavailable)
                    if micro is None:
                        structural = [m for m in structural if not m.startswith("micro")]
                res = [structural_batch(s, t, metrics=structural, micro=micro, name=nm)
                       for s, t, nm in triples] if structural else []
                for m in structural:
                    record(m, [r[m] for r in res], n_all)
        run("gmsd", lambda: [gmsd_batch(s, t, vr) for s, t, _ in triples], n_all)
        run("fsim", lambda: [fsim_batch(s[:n_slow], t, vr) for s, t, _ in triples], n_slow)
        if self.keep("frc") or self.keep("power_ratio"):
            with self.timer("spectral"):
                frc_f, power = [], []
                for s, t, nm in triples:
                    sp = spectra(s, t, name=nm)
                    frc_f.append(np.atleast_1d(frc_crossing(sp.frequencies, sp.frc(),
                                                            self.frc_threshold)))
                    if self.keep("power_ratio"):
                        power.append(power_ratio_from(sp, self.power_cutoff))
                if self.keep("frc"):
                    record("frc_frequency", frc_f, n_all)
                    if self.pixel_size_um:
                        record("frc_resolution_um", [self.pixel_size_um / f for f in frc_f],
                               n_all)
                if self.keep("power_ratio"):
                    record("power_ratio", power, n_all)
        if self.lpips is not None:
            with self.timer("lpips"):
                values = []
                for s, t, _ in triples:
                    pp = tile_patches(to_unit_range(s[:n_slow], vr))
                    tp = np.broadcast_to(tile_patches(to_unit_range(t, vr)), pp.shape)
                    values.append(self.lpips(pp.reshape(-1, *pp.shape[-2:]),
                                             tp.reshape(-1, *tp.shape[-2:])))
                record("lpips", values, n_slow)
        dataset_values = {m: _mean_or_none(v) for m, v in per_image.items()}
        if self.fid is not None:
            with self.timer("fid"):
                # FID of the set of k-th samples of all images, averaged over k.
                fids = [self.fid(np.concatenate([tile_patches(to_unit_range(s[k], vr))
                                                 for s in stack])) for k in range(n_slow)]
                dataset_values["fid"] = _finite_or_none(np.mean(fids))
                counts["fid"] = n_slow
        return {"dataset": dataset_values, "per_image": per_image, "n_samples": counts}


def evaluate_arrays(pred_mmse: Sequence[np.ndarray], target: Sequence[np.ndarray],
                    samples: Sequence[np.ndarray] | None = None,
                    std: Sequence[np.ndarray] | None = None, *,
                    input: Sequence[np.ndarray] | None = None,
                    metrics: Sequence[str] = METRICS,
                    weights_dir: str | Path | None = None,
                    fid_reference: Sequence[np.ndarray] | None = None,
                    pixel_size_um: float | None = None,
                    names: Sequence[str] | None = None,
                    dataset: str = "dataset", method: str = "method",
                    max_perceptual_samples: int = 5,
                    value_range: tuple[float, float] | None = None,
                    frc_threshold: float = FRC_THRESHOLD,
                    power_cutoff: float = 0.25,
                    n_bins: int = 50) -> dict[str, Any]:
    """Compute every requested metric for a set of predictions.

    Args:
        pred_mmse: per image, the ``(Y, X)`` float MMSE prediction.
        target: per image, the ``(Y, X)`` float target (ground truth, non-constant).
        samples: per image, ``(S, Y, X)`` float posterior samples (S may differ by image).
        std: per image, ``(Y, X)`` predicted std (≥ 0); default: the std of the samples.
        input: per image, the ``(Y, X)`` widefield input, scored as the ``input`` baseline.
        metrics: subset of :data:`METRICS`.
        weights_dir: folder with LPIPS/FID weight files (see
            :mod:`hazematching.metrics.perceptual`); never downloaded.
        fid_reference: ``(Y, X)`` images whose 64×64 patches form the FID reference set
            (training target crops); default: the evaluation targets (recorded in settings).
        pixel_size_um: lateral pixel size; adds FRC resolution in µm.
        names: per image label used in errors and results (default ``image_0``, ...).
        dataset, method: labels stored with the results (tables group by them).
        max_perceptual_samples: samples per image used for LPIPS, FID and FSIM.
        value_range: intensity range for the perceptual measures (None = per-image min-max).
        frc_threshold: FRC resolution threshold (default 1/7).
        power_cutoff: lower frequency (cycles/pixel) of the power-spectrum ratio band.
        n_bins: std bins for the calibration curve.

    Returns:
        JSON-ready dict: ``format``, ``version``, ``dataset``, ``method``, ``images``,
        ``settings``, ``variants`` (``{variant: {"dataset": {metric: value},
        "per_image": {metric: [value per image]}, "n_samples": {metric: count}}}``),
        ``uncertainty`` (or None), ``unavailable`` (``{metric: reason}``) and ``timings_s``.
        Undefined values (e.g. PSNR of a perfect prediction, MS-SSIM NaN) are None.
    """
    wanted = _check_metrics(metrics)
    n = len(target)
    if n == 0:
        raise ValueError("no images to evaluate")
    names = [str(s) for s in names] if names is not None else [f"image_{i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"got {len(names)} names for {n} images")
    if max_perceptual_samples < 1:
        raise ValueError(f"max_perceptual_samples must be >= 1, got {max_perceptual_samples}")
    if not 0 < power_cutoff < 0.5:
        raise ValueError(f"power_cutoff must lie in (0, 0.5) cycles/pixel, got {power_cutoff}")
    targets, mmse, smp, sd, inp = _validate(pred_mmse, target, samples, std, input, names)
    if fid_reference is not None and "fid" in wanted:
        fid_reference = [_as_float(r, f"fid_reference[{i}]") for i, r in enumerate(fid_reference)]
        if any(r.ndim != 2 for r in fid_reference):
            raise ValueError("fid_reference images must be 2-D (Y, X)")

    timer = _Timer()
    unavailable: dict[str, str] = {}
    min_side = min(min(t.shape) for t in targets)
    if min_side < MS_SSIM_MIN_SIZE:
        for m in ("ms_ssim", "micro_ms3im"):
            if m in wanted:
                unavailable[m] = (f"images must be at least {MS_SSIM_MIN_SIZE} px per side for "
                                  f"5-scale MS-SSIM; the smallest side is {min_side} px")
    if min_side < PATCH_SIZE:
        for m in ("lpips", "fid"):
            if m in wanted:
                unavailable[m] = (f"images must be at least {PATCH_SIZE} px per side for "
                                  f"{PATCH_SIZE}×{PATCH_SIZE} patches; the smallest side is "
                                  f"{min_side} px")

    # One list of (B, Y, X) stacks per variant.
    stacks: dict[str, list[np.ndarray]] = {"mmse": [m[None] for m in mmse]}
    if smp is not None:
        stacks["sample"] = smp
    if inp is not None:
        stacks["input"] = [x[None] for x in inp]

    def keep(metric: str) -> bool:
        return metric in wanted and metric not in unavailable

    lpips_scorer: LPIPSScorer | None = None
    if keep("lpips"):
        with timer("lpips"):
            try:
                lpips_scorer = LPIPSScorer(weights_dir)
            except MetricUnavailableError as err:
                unavailable["lpips"] = str(err)
    fid_scorer: FIDScorer | None = None
    fid_source = "fid_reference argument" if fid_reference is not None else \
        "evaluation targets (no training reference given)"
    if keep("fid"):
        with timer("fid"):
            try:
                ref = fid_reference if fid_reference is not None else targets
                ref_patches = np.concatenate(
                    [tile_patches(to_unit_range(r, value_range)) for r in ref])
                fid_scorer = FIDScorer(ref_patches, weights_dir)
            except MetricUnavailableError as err:
                unavailable["fid"] = str(err)

    scorer = _VariantScorer(targets=targets, names=names, keep=keep, unavailable=unavailable,
                            timer=timer, value_range=value_range,
                            max_perceptual_samples=max_perceptual_samples,
                            frc_threshold=frc_threshold, power_cutoff=power_cutoff,
                            pixel_size_um=pixel_size_um, lpips=lpips_scorer, fid=fid_scorer)
    variants = {variant: scorer.score(stack) for variant, stack in stacks.items()}

    uncertainty = None
    if keep("uncertainty"):
        with timer("uncertainty"):
            std_maps = sd
            if std_maps is None and smp is not None and min(len(s) for s in smp) >= 2:
                std_maps = [std_from_samples(s) for s in smp]
            if std_maps is None:
                unavailable["uncertainty"] = ("needs std maps or at least 2 samples per image")
            else:
                errors = [m.astype(np.float64) - t for m, t in zip(mmse, targets)]
                uncertainty = uncertainty_summary(std_maps, errors, n_bins=n_bins)
                uncertainty["std_source"] = "std maps" if sd is not None else "sample std"

    return {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "dataset": dataset,
        "method": method,
        "images": names,
        "settings": {
            "metrics": wanted,
            "n_images": n,
            "shapes": [list(t.shape) for t in targets],
            "samples_per_image": [len(s) for s in smp] if smp is not None else None,
            "max_perceptual_samples": max_perceptual_samples,
            "patch_size": PATCH_SIZE,
            "value_range": list(value_range) if value_range is not None else "per-image min-max",
            "pixel_size_um": pixel_size_um,
            "frc_threshold": frc_threshold,
            "power_cutoff": power_cutoff,
            "fid_reference": fid_source if "fid" in wanted else None,
        },
        "variants": variants,
        "uncertainty": uncertainty,
        "unavailable": unavailable,
        "timings_s": {k: round(v, 3) for k, v in timer.seconds.items()},
    }


def _fit_micro_or_skip(targets: list[np.ndarray], stack: list[np.ndarray],
                       unavailable: dict[str, str]) -> MicroParams | None:
    """Fit MicroSSIM on one prediction per image (the first sample for the sample variant:
    samples are exchangeable draws, and fitting on all of them would hold every SSIM element
    of every sample in memory at once)."""
    try:
        return fit_micro(targets, [s[0] for s in stack])
    except ImportError as err:
        reason = f"needs the 'microssim' package ({err}); install hazematching[metrics]"
        unavailable["micro_ssim"] = unavailable["micro_ms3im"] = reason
        return None


def _json_clean(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None (JSON has no NaN/Infinity)."""
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite_or_none(obj)
    return obj


def save_results(results: dict[str, Any], path: str | Path) -> Path:
    """Write evaluation results as JSON, atomically (never a half-written file)."""
    path = Path(path)
    text = json.dumps(_json_clean(results), indent=1, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """Read results written by :func:`save_results`; raises ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such results file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path}: not a hazematching evaluation results file (expected "
                         f"'format': '{RESULTS_FORMAT}')")
    if data.get("version") != RESULTS_VERSION:
        raise ValueError(f"{path}: results version {data.get('version')} is not supported "
                         f"(expected {RESULTS_VERSION})")
    return data


def save_gallery(path: str | Path, *, target: np.ndarray, mmse: np.ndarray,
                 samples: np.ndarray | None = None, std: np.ndarray | None = None,
                 input: np.ndarray | None = None,
                 crop: int = 256) -> Path:
    """Store a centre crop of one image's panels for the report gallery (``.npz``, atomic).

    Args:
        path: destination ``.npz``.
        target, mmse, std, input: ``(Y, X)`` arrays.
        samples: ``(S, Y, X)``; the first three are kept.
        crop: side of the centre crop in pixels (the whole image if smaller).
    """
    y0 = max(0, (target.shape[0] - crop) // 2)
    x0 = max(0, (target.shape[1] - crop) // 2)
    win = (..., slice(y0, y0 + crop), slice(x0, x0 + crop))
    panels = {"target": target, "mmse": mmse, "std": std, "input": input,
              "samples": None if samples is None else samples[:3]}
    arrays = {k: np.asarray(v, dtype=np.float32)[win] for k, v in panels.items() if v is not None}
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def load_gallery(path: str | Path) -> dict[str, np.ndarray]:
    """Panels written by :func:`save_gallery` (keys among target, mmse, samples, std, input)."""
    with np.load(Path(path)) as data:
        return {k: data[k] for k in data.files}


def _find(folder: Path, stem: str, suffix: str) -> Path | None:
    for ext in (".tif", ".tiff"):
        p = folder / f"{stem}{suffix}{ext}"
        if p.is_file():
            return p
    return None


def _read_target(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A plain 2-D target, or the paper layout (CYX: ch0 confocal target, ch1 widefield)."""
    arr, axes = read_image(path)
    if axes == "YX":
        return arr, None
    if axes == "CYX" and arr.shape[0] == 2:
        return arr[0], arr[1]
    raise ImageError(f"{path}: expected a 2-D (YX) target or the paper layout (2-channel CYX: "
                     f"channel 0 confocal target, channel 1 widefield input); got axes {axes} "
                     f"and shape {arr.shape}")


def _read_plane(path: Path, what: str) -> np.ndarray:
    arr, axes = read_image(path)
    if axes != "YX":
        raise ImageError(f"{path}: expected a 2-D (YX) {what}, got axes {axes} and shape "
                         f"{arr.shape}")
    return arr


def _read_samples(path: Path) -> np.ndarray:
    arr, axes = read_image(path)
    if arr.ndim == 2:  # a single sample: tifffile drops the singleton sample axis
        return arr[None]
    if arr.ndim != 3 or "C" in axes:
        raise ImageError(f"{path}: expected samples as a (S, Y, X) stack, got axes {axes} and "
                         f"shape {arr.shape}")
    return arr


def _read_reference(folder: Path) -> list[np.ndarray]:
    return [_read_target(p)[0] for p in list_images(folder)]


def evaluate_folders(pred_dir: str | Path, target_dir: str | Path, *,
                     out_dir: str | Path | None = None,
                     metrics: Sequence[str] = METRICS,
                     weights_dir: str | Path | None = None,
                     fid_reference: str | Path | None = None,
                     pixel_size_um: float | None = None,
                     dataset: str | None = None, method: str | None = None,
                     max_perceptual_samples: int = 5,
                     value_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """Evaluate prediction TIFFs against target TIFFs matched by name.

    Layout: for every target ``<stem>.tif`` in `target_dir` (stem = the name up to its first
    dot, as :meth:`hazematching.api.Model.predict_file` names its outputs), `pred_dir` must hold
    ``<stem>_mmse.tif`` and may hold ``<stem>_std.tif`` and ``<stem>_samples.tif`` (S, Y, X) —
    for all images or for none. Predictions without a target are an error too. A target is a
    plain 2-D image or the paper layout: 2-channel CYX with channel 0 = confocal target and
    channel 1 = widefield input, which is then also scored as the ``input`` baseline.

    Args:
        pred_dir: folder of prediction TIFFs.
        target_dir: folder of target TIFFs.
        out_dir: if given, ``results.json`` and ``gallery.npz`` (first image) are written there.
        metrics, weights_dir, pixel_size_um, max_perceptual_samples, value_range: see
            :func:`evaluate_arrays`.
        fid_reference: folder of training target TIFFs (plain or paper layout) for FID.
        dataset: label; default the target folder name. method: default the prediction folder
            name.

    Returns:
        The results dict of :func:`evaluate_arrays` plus ``files`` (the files read) and, with
        `out_dir`, ``gallery`` (the gallery file name).

    Raises:
        hazematching.io.ImageError: a missing, unreadable or ill-shaped file (named).
        ValueError: invalid values (NaN, constant target, shape mismatch) naming the image.
    """
    pred_dir, target_dir = Path(pred_dir), Path(target_dir)
    if not pred_dir.is_dir():
        raise ImageError(f"{pred_dir}: no such prediction folder")
    target_files = list_images(target_dir)
    # Same stem rule as Model.predict_file: the name up to its first dot.
    stems = [p.name.split(".")[0] for p in target_files]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise ImageError(f"{target_dir}: several targets share the stem(s) {', '.join(clash)} "
                         f"(name up to the first dot), so predictions cannot be matched")
    orphans = sorted(p.name for p in list_images(pred_dir)
                     if (stem := p.name.split(".")[0]).endswith("_mmse")
                     and stem[:-len("_mmse")] not in stems)
    if orphans:
        raise ImageError(f"{pred_dir}: prediction(s) {', '.join(orphans)} have no target "
                         f"<stem>.tif in {target_dir}")
    found: dict[str, list[Path | None]] = {
        kind: [_find(pred_dir, s, f"_{kind}") for s in stems] for kind in ("mmse", "std",
                                                                           "samples")}
    missing = [f"{pred_dir / (s + '_mmse.tif')} (for target {t.name})"
               for s, t, p in zip(stems, target_files, found["mmse"]) if p is None]
    if missing:
        raise ImageError("missing MMSE prediction(s): " + "; ".join(missing))
    for kind in ("std", "samples"):
        have = [p is not None for p in found[kind]]
        if any(have) and not all(have):
            absent = [str(pred_dir / f"{s}_{kind}.tif") for s, h in zip(stems, have) if not h]
            raise ImageError(f"{kind} files exist for some images but not for: "
                             f"{', '.join(absent)}; provide them for all images or none")

    targets, inputs = [], []
    for p in target_files:
        t, x = _read_target(p)
        targets.append(t)
        inputs.append(x)
    if any(x is None for x in inputs) and not all(x is None for x in inputs):
        raise ImageError(f"{target_dir}: mixes plain targets and 2-channel (target, input) "
                         f"files; use one layout for the whole folder")
    mmse = [_read_plane(p, "MMSE prediction") for p in found["mmse"]]
    std = [_read_plane(p, "std map") for p in found["std"]] if found["std"][0] else None
    samples = [_read_samples(p) for p in found["samples"]] if found["samples"][0] else None
    reference = _read_reference(Path(fid_reference)) if fid_reference is not None else None
    names = [p.name for p in target_files]
    results = evaluate_arrays(
        mmse, targets, samples, std, input=None if inputs[0] is None else inputs,
        metrics=metrics, weights_dir=weights_dir, fid_reference=reference,
        pixel_size_um=pixel_size_um, names=names,
        dataset=dataset or target_dir.resolve().name, method=method or pred_dir.resolve().name,
        max_perceptual_samples=max_perceptual_samples, value_range=value_range)
    results["files"] = {
        "targets": [str(p) for p in target_files],
        **{kind: [str(p) for p in paths] for kind, paths in found.items() if paths[0]},
        "fid_reference": str(fid_reference) if fid_reference is not None else None,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        gallery_std = std[0] if std else None
        if gallery_std is None and samples and len(samples[0]) >= 2:
            gallery_std = std_from_samples(samples[0])
        save_gallery(out_dir / GALLERY_FILE, target=targets[0], mmse=mmse[0],
                     samples=samples[0] if samples else None, std=gallery_std,
                     input=inputs[0])
        results["gallery"] = GALLERY_FILE
        save_results(results, out_dir / RESULTS_FILE)
    return results
