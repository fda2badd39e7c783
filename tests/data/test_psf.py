"""Physics of the scalar PSFs and of focal-plane image formation."""

from __future__ import annotations

import numpy as np
import pytest

from hazematching.data.psf import (
    OpticsConfig,
    confocal_psf,
    defocus_blur_radius_um,
    image_focal_planes,
    widefield_psf,
)

SHAPE = (9, 48, 48)
VOXEL = (0.3, 0.1, 0.1)
OPTICS = dict(na=1.4, refractive_index=1.518)


@pytest.fixture(scope="module")
def wf() -> np.ndarray:
    return widefield_psf(SHAPE, VOXEL, wavelength_um=0.52, **OPTICS)


@pytest.fixture(scope="module")
def cf() -> np.ndarray:
    return confocal_psf(SHAPE, VOXEL, excitation_wavelength_um=0.488,
                        emission_wavelength_um=0.52, pinhole_au=1.0, **OPTICS)


def test_widefield_every_plane_sums_to_one(wf):
    assert wf.shape == SHAPE and wf.dtype == np.float32
    assert (wf >= 0).all()
    np.testing.assert_allclose(wf.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_widefield_peaks_in_focus_on_axis_and_spreads_with_defocus(wf):
    c = SHAPE[0] // 2
    assert np.unravel_index(wf.argmax(), wf.shape) == (c, SHAPE[1] // 2, SHAPE[2] // 2)
    peaks = wf.max(axis=(1, 2))
    assert np.all(np.diff(peaks[: c + 1]) > 0) and np.all(np.diff(peaks[c:]) < 0)
    # Aberration-free: defocus above and below the focus gives the same intensity.
    np.testing.assert_allclose(wf[c - 2], wf[c + 2], atol=1e-6)


def test_widefield_in_focus_width_matches_diffraction_limit():
    # Point-sampled on a fine grid, the Airy FWHM is 0.51 λ/NA.
    psf = widefield_psf((1, 128, 128), (0.1, 0.01, 0.01), wavelength_um=0.52, oversample=1,
                        **OPTICS)[0]
    profile = psf[64]
    fwhm_um = (profile >= profile.max() / 2).sum() * 0.01
    assert fwhm_um == pytest.approx(0.51 * 0.52 / 1.4, abs=0.02)


def test_confocal_sections_optically(cf, wf):
    c = SHAPE[0] // 2
    sums = cf.sum(axis=(1, 2))
    assert sums[c] == pytest.approx(1.0, rel=1e-5)
    assert np.all(np.diff(sums[: c + 1]) > 0) and np.all(np.diff(sums[c:]) < 0)
    assert sums[0] < 0.05  # 1.2 µm out of focus: almost all light rejected
    # Excitation × detection: the in-focus spot is tighter than the widefield one.
    assert cf[c].max() > wf[c].max()


def test_wider_pinhole_rejects_less_out_of_focus_light():
    kw = dict(excitation_wavelength_um=0.488, emission_wavelength_um=0.52, **OPTICS)
    closed = confocal_psf(SHAPE, VOXEL, pinhole_au=0.0, **kw).sum(axis=(1, 2))
    open_ = confocal_psf(SHAPE, VOXEL, pinhole_au=5.0, **kw).sum(axis=(1, 2))
    assert open_[0] > 2 * closed[0]


def test_optics_config_builds_the_same_psfs(wf):
    np.testing.assert_array_equal(OpticsConfig().widefield_psf(SHAPE, VOXEL), wf)


def test_image_formation_conserves_flux(wf):
    rng = np.random.default_rng(0)
    volume = rng.random((2, *SHAPE)).astype(np.float32)
    image = image_focal_planes(volume, wf, [SHAPE[0] // 2])
    assert image.shape == (2, 1, *SHAPE[1:])
    np.testing.assert_allclose(image.sum(axis=(-2, -1))[:, 0], volume.sum(axis=(1, 2, 3)),
                               rtol=1e-4)


def test_image_of_a_point_is_the_shifted_psf(wf):
    nz = SHAPE[0]
    volume = np.zeros((nz, *SHAPE[1:]), dtype=np.float32)
    volume[1, 10, 30] = 1.0
    image = image_focal_planes(volume, wf, [4])[0]
    # The point sits 3 planes before the focus: PSF plane c + (1 − 4), centred at (10, 30).
    expected = np.roll(wf[nz // 2 - 3], (10 - SHAPE[1] // 2, 30 - SHAPE[2] // 2), axis=(0, 1))
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_errors_are_explicit(wf):
    with pytest.raises(ValueError, match="smaller than refractive_index"):
        widefield_psf(SHAPE, VOXEL, na=1.6, wavelength_um=0.52, refractive_index=1.518)
    with pytest.raises(ValueError, match="odd"):
        widefield_psf(SHAPE, VOXEL, wavelength_um=0.52, oversample=2, **OPTICS)
    with pytest.raises(ValueError, match="voxel_size_um"):
        widefield_psf(SHAPE, (0.1, 0.1), wavelength_um=0.52, **OPTICS)
    with pytest.raises(ValueError, match="lateral shape"):
        image_focal_planes(np.zeros((9, 32, 32)), wf, [4])
    with pytest.raises(ValueError, match="planes of defocus"):
        image_focal_planes(np.zeros((9, *SHAPE[1:])), wf, [0])
    with pytest.raises(ValueError, match="na="):
        OpticsConfig(na=1.6)


def test_defocus_blur_radius():
    # tan(asin(0.5)) = 1/√3
    assert defocus_blur_radius_um(-3.0, 1.0, 2.0) == pytest.approx(3.0 / np.sqrt(3.0))
