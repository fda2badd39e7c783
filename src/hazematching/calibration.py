"""Uncertainty calibration: RMV vs RMSE in bins of predicted std, a linear or monotone fit, ENCE.

Pixels are binned by their predicted standard deviation (equal-width bins). For bin k,
RMV_k = sqrt(mean(σ²)) and RMSE_k = sqrt(mean((μ − x)²)). A well-calibrated model has
RMSE_k ≈ RMV_k; the fit RMSE ≈ a·RMV + b, made on validation data, rescales every later std:
σ_cal = a·σ + b. ENCE = mean_k |RMV_k − RMSE_k| / RMV_k over the kept bins
(Levi et al., "Evaluating and Calibrating Uncertainty Prediction in Regression Tasks", 2022).

The *monotone* fit replaces the line by the increasing curve through the bins (isotonic
regression of RMSE_k on RMV_k, weighted by pixel count, over at most
:data:`MONOTONE_FIT_BINS` bins), interpolated linearly between bins and continued with the
line's slope beyond them. It matters for a std estimated from few
samples: its estimation noise spreads pixels of one true uncertainty over several bins, so the
top bins hold pixels whose std came out high by chance and RMSE flattens there (regression
dilution) — a bend that no line follows. The curve is made strictly increasing (a minimal
slope, 0.1 % of the line's, replaces flat runs), so the map keeps the std's ranking: the
Spearman correlation of std and |error| is the same before and after it.

Bins holding fewer than `min_count` pixels are left out (as netcal's ``sample_threshold``): the
RMSE of n pixels has a relative standard error of about 1/√(2n), so a bin of one pixel says
nothing about calibration, yet would weigh as much in ENCE as a bin of thousands. The default
of 30 pixels keeps that error near 13 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

#: How a calibration maps the std: a line (a·σ + b) or the monotone curve through the bins.
CalibrationKind = Literal["linear", "monotone"]


@dataclass(frozen=True)
class CalibrationCurve:
    """Per-bin statistics; all arrays have one entry per non-empty bin."""

    rmv: np.ndarray
    rmse: np.ndarray
    counts: np.ndarray
    bin_edges: np.ndarray  # (n_bins + 1,) edges over the std range, empty bins included
    dropped: int = 0  # pixels in bins left out for holding fewer than min_count pixels


@dataclass(frozen=True)
class Calibration:
    """Std rescaling fitted on validation data: σ_cal = a·σ + b, or, when `knots` are given,
    the increasing piecewise-linear curve through them (see the module docstring).

    `knots`: ((σ_1, σ_cal,1), …) with both coordinates strictly increasing, σ ≥ 0, in
    normalised units; empty for the linear map. Below the first knot and above the last the
    curve continues with slope `a` (kept non-negative and increasing below the first knot).

    `fitted_for` records the sampling settings that shape the std the fit was made on (see
    ``SamplingConfig.estimator``): the number of samples, the solver and its grid, antithetic
    draws, how the mean and the spread are formed. A std formed otherwise (e.g. 8 samples
    instead of 50) has another scale, so the fit does not carry over (:meth:`mismatch`).
    None: not recorded (older models).
    """

    a: float = 1.0
    b: float = 0.0
    fitted_for: dict[str, Any] | None = None
    knots: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        knots = tuple((float(x), float(y)) for x, y in self.knots)
        object.__setattr__(self, "knots", knots)
        if not knots:
            return
        xs, ys = np.array(knots).T
        if len(knots) < 2 or not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            raise ValueError(f"a monotone calibration needs at least 2 finite knots, got "
                             f"{len(knots)}")
        if xs[0] < 0 or ys[0] < 0 or (np.diff(xs) <= 0).any() or (np.diff(ys) <= 0).any():
            raise ValueError("calibration knots must be non-negative and strictly increasing "
                             "in both σ and σ_cal")
        if not self.a > 0:
            raise ValueError(f"a monotone calibration needs a slope a > 0, got {self.a}")

    @property
    def kind(self) -> CalibrationKind:
        """'monotone' when the map is the curve through `knots`, else 'linear'."""
        return "monotone" if self.knots else "linear"

    def apply(self, std: np.ndarray) -> np.ndarray:
        """Calibrated std (same shape and units as `std`), clipped at 0."""
        std = np.asarray(std)
        if not self.knots:
            return np.maximum(self.a * std + self.b, 0.0).astype(std.dtype, copy=False)
        xs, ys = np.array(self.knots).T
        s = std.astype(np.float64).reshape(-1)
        out = np.interp(s, xs, ys)
        hi = s > xs[-1]
        out[hi] = ys[-1] + self.a * (s[hi] - xs[-1])
        lo = s < xs[0]
        # Below the first knot: the line's slope, but never under the proportional map
        # σ·y_1/x_1, so that the curve stays increasing and non-negative down to σ = 0.
        prop = s[lo] * (ys[0] / xs[0]) if xs[0] > 0 else np.full(lo.sum(), ys[0])
        out[lo] = np.maximum(ys[0] + self.a * (s[lo] - xs[0]), prop)
        return np.maximum(out, 0.0).reshape(std.shape).astype(std.dtype, copy=False)

    def mismatch(self, settings: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The settings in which `settings` differ from those of the fit, as
        {name: (fitted, given)}; empty when they agree or the fit's are not recorded."""
        if not self.fitted_for:
            return {}
        return {k: (v, settings.get(k)) for k, v in self.fitted_for.items()
                if settings.get(k) != v}

    def to_dict(self) -> dict[str, Any]:
        """a and b, fitted_for when it is recorded, and knots (as [σ, σ_cal] lists) for a
        monotone map."""
        d = asdict(self)
        if d["fitted_for"] is None:
            del d["fitted_for"]
        if self.knots:
            d["knots"] = [list(k) for k in self.knots]
        else:
            del d["knots"]
        return d


MIN_COUNT = 30


def calibration_curve(std: np.ndarray, error: np.ndarray, n_bins: int = 50,
                      min_count: int = MIN_COUNT) -> CalibrationCurve:
    """Bin pixels by predicted std and compute RMV and RMSE per bin.

    Args:
        std: predicted per-pixel standard deviations, any shape (intensity units).
        error: prediction − target, same shape as `std`.
        n_bins: number of equal-width bins between min and max std.
        min_count: bins with fewer pixels are left out (see the module docstring); if no bin
            has that many, the fullest bin is kept.
    """
    std = np.asarray(std, dtype=np.float64).ravel()
    error = np.asarray(error, dtype=np.float64).ravel()
    if std.shape != error.shape:
        raise ValueError(f"std and error must have the same number of pixels, got {std.size} "
                         f"and {error.size}")
    if std.size == 0:
        raise ValueError("cannot calibrate on zero pixels")
    if not (np.isfinite(std).all() and np.isfinite(error).all()):
        raise ValueError("std and error must be finite (found NaN or Inf)")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    lo, hi = float(std.min()), float(std.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-12, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, std, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    var_sum = np.bincount(idx, weights=std**2, minlength=n_bins)
    sq_sum = np.bincount(idx, weights=error**2, minlength=n_bins)
    keep = counts >= max(1, min(min_count, int(counts.max())))
    return CalibrationCurve(
        rmv=np.sqrt(var_sum[keep] / counts[keep]),
        rmse=np.sqrt(sq_sum[keep] / counts[keep]),
        counts=counts[keep],
        bin_edges=edges,
        dropped=int(counts[~keep].sum()),
    )


def fit_calibration(curve: CalibrationCurve) -> tuple[float, float]:
    """Least-squares fit RMSE ≈ a·RMV + b over the bins, weighted by pixel count.

    Weighting by count keeps nearly empty tail bins from dominating the fit.
    """
    if curve.rmv.size < 2 or np.ptp(curve.rmv) == 0:
        # One bin only: a pure scale that matches RMSE.
        rmv = float(np.sum(curve.counts * curve.rmv) / curve.counts.sum())
        rmse = float(np.sum(curve.counts * curve.rmse) / curve.counts.sum())
        return (rmse / rmv if rmv > 0 else 1.0), 0.0
    w = np.sqrt(curve.counts.astype(np.float64))
    design = np.stack([curve.rmv, np.ones_like(curve.rmv)], axis=1) * w[:, None]
    (a, b), *_ = np.linalg.lstsq(design, curve.rmse * w, rcond=None)
    if a <= 0:
        # A non-increasing fit would invert the uncertainty ranking: fall back to a pure scale.
        wc = curve.counts.astype(np.float64)
        return float(np.sum(wc * curve.rmse * curve.rmv) / np.sum(wc * curve.rmv**2)), 0.0
    return float(a), float(b)


#: The monotone curve's least slope between knots, relative to the line's slope `a`.
_MIN_RELATIVE_SLOPE = 1e-3


def fit_monotone(curve: CalibrationCurve, a: float) -> tuple[tuple[float, float], ...]:
    """Knots of the increasing curve RMSE ≈ g(RMV) through the bins: isotonic regression of
    RMSE_k on RMV_k weighted by pixel count, made strictly increasing with a least slope of
    0.1 % of `a` (the line's slope, > 0). Empty when fewer than 2 bins have a positive RMV."""
    from scipy.optimize import isotonic_regression

    ok = curve.rmv > 0
    xs, rmse, w = curve.rmv[ok], curve.rmse[ok], curve.counts[ok].astype(np.float64)
    if xs.size < 2:
        return ()
    ys = isotonic_regression(rmse, weights=w, increasing=True).x
    least = _MIN_RELATIVE_SLOPE * a
    # An all-zero first bin is lifted just above 0, so that the curve stays positive.
    ys[0] = max(ys[0], least * xs[0])
    for k in range(1, ys.size):  # flat runs of the isotonic fit would tie ranks: tilt them
        ys[k] = max(ys[k], ys[k - 1] + least * (xs[k] - xs[k - 1]))
    return tuple(zip(xs.tolist(), ys.tolist()))


def ence(curve: CalibrationCurve) -> float:
    """Expected normalised calibration error: mean over bins of |RMV − RMSE| / RMV."""
    ok = curve.rmv > 0
    if not ok.any():
        raise ValueError("ENCE is undefined when every predicted std is zero")
    return float(np.mean(np.abs(curve.rmv[ok] - curve.rmse[ok]) / curve.rmv[ok]))


#: Bins of the curve the monotone map is fitted through (at most; fewer if `n_bins` is
#: smaller). Measured on two models (README, *Speed*): through 50 bins the curve follows the
#: validation set's noise and the held-out ENCE of a 50-sample std rose from 0.065 (line) to
#: 0.075–0.080; through 20 bins it stays at 0.066–0.067, and a few-sample std keeps most of its
#: gain (0.15 → 0.10).
MONOTONE_FIT_BINS = 20


def check_kind(kind: str, name: str = "calibration kind") -> None:
    """Refuse a calibration kind other than 'linear' or 'monotone', calling it `name`."""
    if kind not in get_args(CalibrationKind):
        raise ValueError(f"{name} must be 'linear' or 'monotone', got {kind!r}")


def fit(std: np.ndarray, error: np.ndarray, n_bins: int = 50,
        kind: CalibrationKind = "monotone",
        fitted_for: dict[str, Any] | None = None,
        curve: CalibrationCurve | None = None) -> Calibration:
    """Fit a :class:`Calibration` from validation std and error arrays (same shape): the line
    through `n_bins` equal-width bins always (its a, b), and for 'monotone' the knots of the
    increasing curve through min(`n_bins`, :data:`MONOTONE_FIT_BINS`) bins.

    `curve`: ``calibration_curve(std, error, n_bins)`` when the caller has it already (e.g. to
    report the uncalibrated ENCE), so that the pixels are not binned twice."""
    check_kind(kind)
    if curve is None:
        curve = calibration_curve(std, error, n_bins)
    elif (curve.bin_edges.size != n_bins + 1
          or int(curve.counts.sum()) + curve.dropped != np.size(std)):
        raise ValueError(f"the given curve is not the {n_bins}-bin curve of these "
                         f"{np.size(std)} pixels: pass the curve of the same std and error")
    a, b = fit_calibration(curve)
    knots: tuple[tuple[float, float], ...] = ()
    if kind == "monotone":  # through at most MONOTONE_FIT_BINS bins: `curve` when it has no more
        coarse = (curve if n_bins <= MONOTONE_FIT_BINS
                  else calibration_curve(std, error, MONOTONE_FIT_BINS))
        knots = fit_monotone(coarse, a)
    return Calibration(a=a, b=b, fitted_for=fitted_for, knots=knots)


def heldout_ence(stds: Sequence[np.ndarray], errors: Sequence[np.ndarray], n_bins: int = 50,
                 kind: CalibrationKind = "monotone", folds: int = 2,
                 images: Sequence[int] | None = None) -> float | None:
    """ENCE of a calibration on images it was not fitted on: the images are dealt into `folds`
    groups (the k-th image to group k mod `folds`), each group is scored with the calibration
    fitted on the others, and the groups' ENCEs are averaged. The in-sample ENCE of a fit flatters it
    (a monotone curve through the bins it is scored on is ≈ 0); this one estimates what a new
    image sees.

    Args:
        stds, errors: per map (an image, or one plane of a stack), the raw std and the error
            of the MMSE (any shape, same per map), in the same units.
        n_bins, kind: as for :func:`fit`.
        folds: number of groups, at least 2.
        images: per map, the index of the image it comes from (default: each map its own), so
            that the planes of one stack, whose errors are alike, stay in one group.

    Returns:
        The mean held-out ENCE, or None with fewer images than `folds`.
    """
    if folds < 2:
        raise ValueError(f"held-out ENCE needs at least 2 folds, got {folds}")
    if len(stds) != len(errors):
        raise ValueError(f"{len(stds)} std maps but {len(errors)} error maps")
    owner = list(range(len(stds))) if images is None else [int(i) for i in images]
    if len(owner) != len(stds):
        raise ValueError(f"{len(stds)} std maps but {len(owner)} image indices")
    group = {img: r % folds for r, img in enumerate(sorted(set(owner)))}
    if len(group) < folds:
        return None
    def pooled(held_out: bool, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(std, error) of every map in group k (held_out) or outside it, flattened."""
        idx = [i for i, img in enumerate(owner) if (group[img] == k) == held_out]
        return (np.concatenate([np.ravel(stds[i]) for i in idx]),
                np.concatenate([np.ravel(errors[i]) for i in idx]))

    scores = []
    for k in range(folds):
        calib = fit(*pooled(False, k), n_bins, kind)
        std, err = pooled(True, k)
        scores.append(ence(calibration_curve(calib.apply(std), err, n_bins)))
    return float(np.mean(scores))


def plot_calibration(curves: dict[str, CalibrationCurve], path: str | Path,
                     title: str = "Calibration") -> Path:
    """Plot RMSE vs RMV per labelled curve with the identity line, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hazematching.io import atomic_path

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    top = 0.0
    for label, c in curves.items():
        ax.plot(c.rmv, c.rmse, "o-", ms=3, label=f"{label} (ENCE {ence(c):.3f})")
        top = max(top, float(c.rmv.max()), float(c.rmse.max()))
    ax.plot([0, top], [0, top], "k--", lw=1, label="identity")
    ax.set_xlabel("RMV (root mean predicted variance)")
    ax.set_ylabel("RMSE")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.set_aspect("equal")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
