"""FRC and power-spectrum ratio: exact answers on constructed images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from hazematching.metrics import spectral as sp


def test_frc_of_an_image_with_itself_is_one_at_every_ring():
    img = np.random.default_rng(0).normal(size=(96, 80))
    freqs, frc = sp.frc_curve(img, img)
    np.testing.assert_allclose(frc, 1.0, atol=1e-12)
    assert freqs[0] == pytest.approx(1 / 80) and freqs[-1] == pytest.approx(0.5)
    assert sp.frc_crossing(freqs, frc) == pytest.approx(0.5)  # never crosses → Nyquist


def test_frc_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 256, 256))
    _, frc = sp.frc_curve(a, b, apodize=False)
    counts = sp.spectra(a, b, apodize=False).counts
    # Each ring correlates ~counts/2 independent complex values: spread ≈ 1/sqrt(counts/2).
    assert np.all(np.abs(frc) < 5 / np.sqrt(counts / 2))
    assert abs(np.mean(frc)) < 0.02


def test_frc_crossing_interpolates_linearly():
    freqs = np.array([0.1, 0.2, 0.3, 0.4])
    curve = np.array([0.9, 0.5, 0.1, 0.05])
    # 0.5 → 0.1 crosses 0.3 halfway between 0.2 and 0.3.
    assert sp.frc_crossing(freqs, curve, threshold=0.3) == pytest.approx(0.25)
    assert sp.frc_crossing(freqs, np.array([0.05, 0.9, 0.9, 0.9]), 0.3) == pytest.approx(0.1)
    np.testing.assert_allclose(sp.frc_crossing(freqs, np.stack([curve, curve]), 0.3),
                               [0.25, 0.25])


def test_frc_resolution_drops_with_noise():
    rng = np.random.default_rng(2)
    clean = gaussian_filter(rng.normal(size=(128, 128)), 1.0)
    lo_noise = [clean + rng.normal(0, 0.02, clean.shape) for _ in range(2)]
    hi_noise = [clean + rng.normal(0, 0.2, clean.shape) for _ in range(2)]
    f_lo = sp.frc_crossing(*sp.frc_curve(*lo_noise))
    f_hi = sp.frc_crossing(*sp.frc_curve(*hi_noise))
    assert f_hi < f_lo


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_gaussian_blur_lowers_power_by_the_analytic_factor(sigma):
    """A Gaussian blur of std σ px multiplies the amplitude at frequency f by
    exp(-(2πσf)²/2), hence the power by exp(-(2πσf)²)."""
    rng = np.random.default_rng(3)
    target = rng.normal(size=(256, 192))
    blurred = gaussian_filter(target, sigma, mode="wrap")  # periodic: no border effects
    spec = sp.spectra(blurred, target, apodize=False)
    p_pred, p_target = spec.radial_power()
    ratio = p_pred[0] / p_target
    expected = np.exp(-(2 * np.pi * sigma * spec.frequencies) ** 2)
    ok = expected > 1e-2  # beyond that the sampled, truncated kernel departs from the ideal
    # Within 3.5 %: a ring spans ±0.5/N in frequency and the blur kernel is sampled.
    np.testing.assert_allclose(ratio[ok], expected[ok], rtol=0.035)
    # Whole band above the cutoff: white noise has flat power, so the expected ratio is the
    # count-weighted mean of the power transfer over the band's rings.
    band = spec.frequencies > 0.1
    expected_band = np.sum(spec.counts[band] * expected[band]) / spec.counts[band].sum()
    got = sp.power_spectrum_ratio(blurred, target, cutoff=0.1, apodize=False)
    assert got == pytest.approx(expected_band, rel=0.05)


def test_power_ratio_identity_and_sharpening():
    rng = np.random.default_rng(4)
    target = gaussian_filter(rng.normal(size=(128, 128)), 1.5)
    assert sp.power_spectrum_ratio(target, target) == pytest.approx(1.0)
    noisy = target + rng.normal(0, 0.1, target.shape)
    assert sp.power_spectrum_ratio(noisy, target) > 1.0
    batch = sp.power_spectrum_ratio(np.stack([target, noisy]), target)
    assert batch.shape == (2,) and batch[0] == pytest.approx(1.0)


def test_spectral_errors():
    img = np.zeros((32, 32))
    with pytest.raises(ValueError, match="one shape"):
        sp.frc_curve(img[:-1], img)
    with pytest.raises(ValueError, match="cutoff"):
        sp.power_spectrum_ratio(img + np.eye(32), img + np.eye(32), cutoff=0.6)
    with pytest.raises(ValueError, match="no power"):
        sp.power_spectrum_ratio(np.eye(32), np.ones((32, 32)))
