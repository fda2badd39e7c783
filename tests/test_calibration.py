"""Calibration: binning, fit and ENCE on constructed cases with known answers."""

import numpy as np
import pytest

from hazematching.calibration import (
    Calibration,
    calibration_curve,
    ence,
    fit,
    fit_calibration,
    heldout_ence,
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


def _few_sample_std(n: int, seed: int, k: int = 8):
    """A std estimated from k draws around a log-uniform true std, and an error drawn with the
    true std: the estimation noise bends RMSE vs RMV (regression dilution)."""
    rng = np.random.default_rng(seed)
    true = np.exp(rng.uniform(np.log(0.02), np.log(0.5), n))
    err = rng.normal(0, true)
    std = rng.normal(0, true[:, None], (n, k)).std(axis=1, ddof=1)
    return std, err


def test_monotone_fit_follows_the_bend_of_a_few_sample_std():
    from scipy import stats

    std_v, err_v = _few_sample_std(40_000, 1)
    std_t, err_t = _few_sample_std(40_000, 2)
    linear, monotone = fit(std_v, err_v, kind="linear"), fit(std_v, err_v)
    assert linear.kind == "linear" and monotone.kind == "monotone" and len(monotone.knots) > 10
    assert (monotone.a, monotone.b) == (linear.a, linear.b)  # the line is kept with the curve
    e_lin = ence(calibration_curve(linear.apply(std_t), err_t))
    e_mono = ence(calibration_curve(monotone.apply(std_t), err_t))
    assert e_lin > 0.08 and e_mono < 0.6 * e_lin  # on held-out pixels
    # A strictly increasing map: the ranking, and so the Spearman correlation, is unchanged.
    rho = [stats.spearmanr(s, np.abs(err_t))[0] for s in (std_t, monotone.apply(std_t))]
    assert rho[0] == pytest.approx(rho[1], abs=1e-12)


def test_monotone_pools_a_decreasing_bin_and_stays_strictly_increasing():
    std = np.repeat([1.0, 2.0, 3.0], 100)
    err = np.repeat([1.0, 3.0, 2.0], 100)  # RMSE 1, 3, 2: the last two pool to 2.5
    c = fit(std, err, n_bins=3)
    xs, ys = np.array(c.knots).T
    np.testing.assert_allclose(xs, [1.0, 2.0, 3.0])
    assert ys[0] == pytest.approx(1.0) and ys[1] == pytest.approx(2.5)
    assert ys[2] > ys[1] and ys[2] == pytest.approx(2.5, abs=1e-2)  # tilted, not flat
    np.testing.assert_allclose(c.apply(xs), ys)


def test_monotone_map_beyond_the_knots():
    c = Calibration(a=2.0, b=0.0, knots=((1.0, 3.0), (2.0, 4.0)))
    assert c.apply(np.array([1.5]))[0] == pytest.approx(3.5)
    assert c.apply(np.array([4.0]))[0] == pytest.approx(4.0 + 2.0 * 2.0)  # slope a above
    below = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    low = c.apply(below)
    np.testing.assert_allclose(low, 3.0 + 2.0 * (below - 1.0))  # the line's slope below
    # Where that line would fall under the proportional map σ·y_1/x_1, the latter holds: the
    # curve stays increasing and non-negative down to σ = 0.
    steep = Calibration(a=3.0, knots=((1.0, 1.0), (2.0, 2.0))).apply(below)
    np.testing.assert_allclose(steep, np.maximum(1.0 + 3.0 * (below - 1.0), below))
    assert steep[0] == 0.0 and (np.diff(steep) > 0).all()


@pytest.mark.parametrize("knots, match", [
    (((1.0, 2.0),), "at least 2"),
    (((1.0, 2.0), (1.0, 3.0)), "strictly increasing"),
    (((1.0, 2.0), (2.0, 1.0)), "strictly increasing"),
    (((-1.0, 2.0), (2.0, 3.0)), "non-negative"),
    (((1.0, 2.0), (2.0, float("nan"))), "finite"),
])
def test_invalid_knots_are_refused(knots, match):
    with pytest.raises(ValueError, match=match):
        Calibration(a=1.0, knots=knots)


def test_calibration_dict_round_trip():
    c = Calibration(a=1.5, b=0.1, fitted_for={"n_samples": 8}, knots=((0.1, 0.2), (0.3, 0.5)))
    d = c.to_dict()
    assert d["knots"] == [[0.1, 0.2], [0.3, 0.5]]
    assert Calibration(**d) == c
    assert "knots" not in Calibration(a=2.0).to_dict()
    with pytest.raises(ValueError, match="'linear' or 'monotone'"):
        fit(np.ones(100), np.ones(100), kind="isotonic")


def test_heldout_ence_scores_each_fold_with_the_others_fit():
    # four "images" of a few-sample std: fold 0 = images 0 and 2, fold 1 = images 1 and 3
    imgs = [_few_sample_std(20_000, seed) for seed in range(4)]
    stds, errs = [s for s, _ in imgs], [e for _, e in imgs]
    by_hand = []
    for fit_on, score_on in (((1, 3), (0, 2)), ((0, 2), (1, 3))):
        calib = fit(np.concatenate([stds[i] for i in fit_on]),
                    np.concatenate([errs[i] for i in fit_on]), 30)
        by_hand.append(ence(calibration_curve(
            calib.apply(np.concatenate([stds[i] for i in score_on])),
            np.concatenate([errs[i] for i in score_on]), 30)))
    assert heldout_ence(stds, errs, 30) == pytest.approx(np.mean(by_hand), rel=1e-12)
    # in-sample, the monotone curve is scored on the bins it went through: it flatters itself
    std, err = np.concatenate(stds), np.concatenate(errs)
    in_sample = ence(calibration_curve(fit(std, err, 30).apply(std), err, 30))
    assert heldout_ence(stds, errs, 30) > 1.5 * in_sample
    assert heldout_ence(stds[:1], errs[:1]) is None  # one image: nothing to hold out
    # maps 0, 1 are planes of image 7 and maps 2, 3 of image 9: each image stays in one fold
    calib = [fit(np.concatenate(stds[a:a + 2]), np.concatenate(errs[a:a + 2]), 30)
             for a in (0, 2)]
    planes = np.mean([ence(calibration_curve(calib[1 - j].apply(np.concatenate(stds[a:a + 2])),
                                             np.concatenate(errs[a:a + 2]), 30))
                      for j, a in enumerate((0, 2))])
    assert heldout_ence(stds, errs, 30, images=[7, 7, 9, 9]) == pytest.approx(planes, rel=1e-12)
    assert heldout_ence(stds, errs, images=[7, 7, 7, 7]) is None  # all planes of one image
    with pytest.raises(ValueError, match="4 std maps but 2 image indices"):
        heldout_ence(stds, errs, images=[0, 1])
    with pytest.raises(ValueError, match="at least 2 folds"):
        heldout_ence(stds, errs, folds=1)
    with pytest.raises(ValueError, match="4 std maps but 3 error maps"):
        heldout_ence(stds, errs[:3])


def test_fit_reuses_a_given_curve_and_refuses_another():
    std, err = _draw(2.0, 0.3, n=50_000)
    curve = calibration_curve(std, err, 30)
    assert fit(std, err, 30, curve=curve) == fit(std, err, 30)
    with pytest.raises(ValueError, match="not the 30-bin curve"):
        fit(std, err, 30, curve=calibration_curve(std, err, 20))
    with pytest.raises(ValueError, match="not the 30-bin curve"):
        fit(std[:1000], err[:1000], 30, curve=curve)
