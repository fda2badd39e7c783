"""Calibration: binning, fit and ENCE on constructed cases with known answers."""

import numpy as np
import pytest

from hazematching.calibration import (
    Calibration,
    calibration_curve,
    ence,
    fit,
    fit_calibration,
    plot_calibration,
)


def _draw(scale: float, offset: float = 0.0, n: int = 400_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    std = rng.uniform(0.1, 2.0, n)
    err = rng.normal(0, scale * std + offset)
    return std, err


def test_perfectly_calibrated_has_small_ence_and_unit_fit():
    std, err = _draw(1.0)
    curve = calibration_curve(std, err, 20)
    assert ence(curve) < 0.02
    a, b = fit_calibration(curve)
    assert a == pytest.approx(1.0, abs=0.03) and b == pytest.approx(0.0, abs=0.03)


def test_overconfident_std_is_rescaled():
    std, err = _draw(2.0, 0.3)
    c = fit(std, err, 30)
    assert c.a == pytest.approx(2.0, abs=0.06) and c.b == pytest.approx(0.3, abs=0.06)
    before = ence(calibration_curve(std, err, 30))
    after = ence(calibration_curve(c.apply(std), err, 30))
    assert before > 0.9 and after < 0.03


def test_bins_hand_computed():
    std = np.array([1.0, 1.0, 3.0, 3.0])
    err = np.array([2.0, 0.0, 3.0, -3.0])
    c = calibration_curve(std, err, n_bins=2, min_count=1)
    np.testing.assert_allclose(c.rmv, [1.0, 3.0])
    np.testing.assert_allclose(c.rmse, [np.sqrt(2.0), 3.0])
    np.testing.assert_array_equal(c.counts, [2, 2])
    assert ence(c) == pytest.approx((np.sqrt(2) - 1) / 2)


def test_negative_slope_falls_back_to_scale():
    std = np.repeat([1.0, 2.0, 3.0], 100)
    err = np.repeat([3.0, 2.0, 1.0], 100)
    a, b = fit_calibration(calibration_curve(std, err, 3, min_count=1))
    assert a > 0 and b == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="same number"):
        calibration_curve(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        calibration_curve(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(ValueError, match="zero pixels"):
        calibration_curve(np.ones(0), np.ones(0))


def test_apply_clips_and_plot(tmp_path):
    assert (Calibration(a=1.0, b=-5.0).apply(np.ones(4, np.float32)) == 0).all()
    std, err = _draw(1.5, n=10_000)
    p = plot_calibration({"raw": calibration_curve(std, err)}, tmp_path / "cal.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sparse_bins_are_left_out():
    rng = np.random.default_rng(1)
    std = np.concatenate([rng.uniform(1.0, 1.1, 5000), [10.0, 10.0]])  # two outlier pixels
    err = np.concatenate([rng.normal(0, std[:5000]), [0.01, 0.01]])
    full = calibration_curve(std, err, 10, min_count=1)
    kept = calibration_curve(std, err, 10)
    assert full.counts[-1] == 2 and ence(full) > 0.4  # one 2-pixel bin with RMSE ≈ 0
    assert kept.dropped == 2 and kept.counts.min() >= 30 and ence(kept) < 0.05
    only_sparse = calibration_curve(np.arange(5.0), np.ones(5), 5)
    assert only_sparse.counts.tolist() == [1, 1, 1, 1, 1]  # nothing reaches 30: keep the fullest
