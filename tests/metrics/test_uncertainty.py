"""Uncertainty summary: calibrated vs miscalibrated std on synthetic errors."""

from __future__ import annotations

import numpy as np
import pytest

from hazematching.metrics.uncertainty import std_from_samples, uncertainty_summary


def _errors(rng: np.random.Generator, n: int = 3, shape=(64, 64)):
    std = [rng.uniform(0.5, 3.0, shape) for _ in range(n)]
    err = [rng.normal(0.0, s) for s in std]  # error drawn with exactly the predicted std
    return std, err


def test_calibrated_std_gives_small_ence_and_unit_fit():
    std, err = _errors(np.random.default_rng(0))
    out = uncertainty_summary(std, err, n_bins=10)
    assert out["ence"] < 0.05
    assert out["calibration_a"] == pytest.approx(1.0, abs=0.1)
    assert abs(out["calibration_b"]) < 0.2
    assert out["pearson_std_abs_error"] > 0.2
    assert out["spearman_std_abs_error"] > 0.2
    assert out["n_pixels"] == 3 * 64 * 64
    curve = out["curve"]
    assert len(curve["rmv"]) == len(curve["rmse"]) == len(curve["counts"])
    assert sum(curve["counts"]) == out["n_pixels"]


def test_overconfident_std_is_detected_by_the_fit():
    std, err = _errors(np.random.default_rng(1))
    out = uncertainty_summary([s / 2 for s in std], err, n_bins=10)
    # RMSE is twice the RMV: slope ≈ 2 and ENCE ≈ |1 - 2| = 1.
    assert out["calibration_a"] == pytest.approx(2.0, abs=0.2)
    assert out["ence"] == pytest.approx(1.0, abs=0.1)


def test_constant_std_has_no_correlation():
    rng = np.random.default_rng(2)
    out = uncertainty_summary([np.ones((8, 8))], [rng.normal(size=(8, 8))], n_bins=5)
    assert out["pearson_std_abs_error"] is None


def test_std_from_samples_and_errors():
    samples = np.stack([np.zeros((4, 4)), np.full((4, 4), 2.0)])
    np.testing.assert_allclose(std_from_samples(samples), np.sqrt(2.0))  # ddof = 1
    with pytest.raises(ValueError, match="S >= 2"):
        std_from_samples(samples[:1])
    with pytest.raises(ValueError, match="negative"):
        uncertainty_summary([-np.ones((2, 2))], [np.ones((2, 2))])
    with pytest.raises(ValueError, match="shape"):
        uncertainty_summary([np.ones((2, 2))], [np.ones((3, 2))])
