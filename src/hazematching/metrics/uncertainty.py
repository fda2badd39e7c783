"""How well predicted per-pixel std matches the actual error of the MMSE prediction.

The binning (RMV/RMSE curve), the linear fit RMSE ≈ a·RMV + b and ENCE come from
:mod:`hazematching.calibration`; this module pools the pixels of a dataset, adds the rank and
linear correlation between std and absolute error, and returns JSON-ready numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from hazematching.calibration import calibration_curve, ence, fit_calibration


def std_from_samples(samples: np.ndarray) -> np.ndarray:
    """Per-pixel std of posterior samples.

    Args:
        samples: ``(S, Y, X)`` float samples, S ≥ 2.

    Returns:
        ``(Y, X)`` float64 standard deviation (ddof = 1, the unbiased variance estimate, which
        matters for small S).
    """
    samples = np.asarray(samples)
    if samples.ndim != 3 or samples.shape[0] < 2:
        raise ValueError(f"need (S, Y, X) samples with S >= 2 to estimate a std, got shape "
                         f"{samples.shape}")
    return np.std(samples, axis=0, ddof=1, dtype=np.float64)


def uncertainty_summary(std: Sequence[np.ndarray], error: Sequence[np.ndarray],
                        n_bins: int = 50) -> dict[str, Any]:
    """Calibration and std/error correlation over all pixels of a set of images.

    Args:
        std: per image, ``(Y, X)`` predicted standard deviation (≥ 0, intensity units).
        error: per image, ``(Y, X)`` MMSE prediction − target in the same units.
        n_bins: equal-width std bins for the RMV/RMSE curve.

    Returns:
        ``{"ence", "calibration_a", "calibration_b", "pearson_std_abs_error",
        "spearman_std_abs_error", "curve": {"rmv", "rmse", "counts", "bin_edges"}}``. ENCE ≥ 0
        (0 = calibrated); a, b fit RMSE ≈ a·RMV + b on these data (a = 1, b = 0 when
        calibrated); correlations in [-1, 1] (NaN-free: None when a std or error map is
        constant).
    """
    if len(std) != len(error) or not std:
        raise ValueError(f"need one std map per error map, got {len(std)} and {len(error)}")
    for i, (s, e) in enumerate(zip(std, error)):
        if np.shape(s) != np.shape(e):
            raise ValueError(f"image {i}: std shape {np.shape(s)} differs from error shape "
                             f"{np.shape(e)}")
        if np.min(s) < 0:
            raise ValueError(f"image {i}: predicted std has negative values (min {np.min(s)})")
    s_all = np.concatenate([np.ravel(s) for s in std]).astype(np.float64)
    e_all = np.concatenate([np.ravel(e) for e in error]).astype(np.float64)
    curve = calibration_curve(s_all, e_all, n_bins=n_bins)
    a, b = fit_calibration(curve)
    abs_err = np.abs(e_all)
    constant = np.ptp(s_all) == 0 or np.ptp(abs_err) == 0
    return {
        "ence": ence(curve),
        "calibration_a": a,
        "calibration_b": b,
        "pearson_std_abs_error": None if constant else float(stats.pearsonr(s_all,
                                                                             abs_err)[0]),
        "spearman_std_abs_error": None if constant else float(stats.spearmanr(s_all,
                                                                               abs_err)[0]),
        "n_pixels": int(s_all.size),
        "curve": {"rmv": curve.rmv.tolist(), "rmse": curve.rmse.tolist(),
                  "counts": curve.counts.tolist(), "bin_edges": curve.bin_edges.tolist()},
    }
