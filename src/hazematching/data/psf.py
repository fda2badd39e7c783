"""Scalar 3D point spread functions (widefield and confocal) and focal-plane image formation.

The PSFs are computed here with numpy/scipy.fft (no GPL dependency). Model: a scalar Debye field
with a uniform circular pupil of radius NA/λ in spatial frequency and the exact (non-paraxial)
defocus phase ``exp(2πi z sqrt((n/λ)² − f²))``, i.e. the angular-spectrum form of the
Born–Wolf/Debye integral. It ignores polarisation, apodisation and refractive-index mismatch
(no Gibson–Lanni aberrations); it keeps what makes widefield images hazy: defocused light that
spreads out but does not disappear.

Evaluating the field by inverse FFT on the image grid makes the PSF *periodic* with the lateral
window ``(ny·dy, nx·dx)``: it is the exact kernel for circular convolution over that window, so a
defocused PSF wider than the window wraps around instead of being cut off, and every plane keeps
its full energy (Parseval). Convolve non-periodic images on a padded window (see
:func:`defocus_blur_radius_um` for how much padding the haze needs).

Normalisation (what conserves flux in :func:`image_focal_planes`):

* widefield: **every z-plane sums to 1**. A camera image focused at plane ``f`` collects the light
  of every emitter in the volume, whatever its defocus, so the image of a volume holding ``N``
  photons' worth of emitters sums to ``N`` (total flux conserved from object to image).
* confocal: the **in-focus plane sums to 1** and the other planes sum to less, by the fraction
  the pinhole rejects (optical sectioning). In-focus structure thus has the same brightness in
  both modalities; only the out-of-focus contribution differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import fft

# Complex values per chunk of PSF planes on the oversampled grid: bounds memory to ~256 MB
# whatever the PSF size.
_CHUNK_VALUES = 2**25


class OpticsConfig(BaseModel):
    """Objective and wavelengths shared by the widefield and the confocal PSF.

    Wavelengths are vacuum wavelengths in µm; the immersion/sample refractive index scales them.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    na: float = Field(1.4, gt=0.0, description="Numerical aperture of the objective.")
    refractive_index: float = Field(1.518, ge=1.0, description="Refractive index of the "
                                    "immersion medium and sample (assumed matched).")
    emission_wavelength_um: float = Field(0.52, gt=0.2, lt=2.0,
                                          description="Emission (detection) wavelength, µm.")
    excitation_wavelength_um: float = Field(0.488, gt=0.2, lt=2.0, description="Excitation "
                                            "wavelength of the confocal laser, µm.")
    pinhole_au: float = Field(1.0, ge=0.0, description="Confocal pinhole diameter in Airy "
                              "units (1 AU = 1.22 λ_em / NA); 0 = point detector.")

    @model_validator(mode="after")
    def _na_below_index(self) -> OpticsConfig:
        if self.na >= self.refractive_index:
            raise ValueError(f"na={self.na} must be smaller than refractive_index="
                             f"{self.refractive_index} (light cannot propagate beyond NA = n)")
        return self

    def widefield_psf(self, shape: Sequence[int], voxel_size_um: Sequence[float], *,
                      oversample: int = 3) -> np.ndarray:
        """:func:`widefield_psf` with this objective; see there for shapes and units."""
        return widefield_psf(shape, voxel_size_um, na=self.na,
                             wavelength_um=self.emission_wavelength_um,
                             refractive_index=self.refractive_index, oversample=oversample)

    def confocal_psf(self, shape: Sequence[int], voxel_size_um: Sequence[float], *,
                     oversample: int = 3) -> np.ndarray:
        """:func:`confocal_psf` with this objective; see there for shapes and units."""
        return confocal_psf(shape, voxel_size_um, na=self.na,
                            excitation_wavelength_um=self.excitation_wavelength_um,
                            emission_wavelength_um=self.emission_wavelength_um,
                            refractive_index=self.refractive_index, pinhole_au=self.pinhole_au,
                            oversample=oversample)


def _check_geometry(shape: Sequence[int], voxel_size_um: Sequence[float], na: float,
                    refractive_index: float, oversample: int) -> tuple[tuple[int, int, int],
                                                                      tuple[float, float, float]]:
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be three positive ints (nz, ny, nx), got {tuple(shape)}")
    if len(voxel_size_um) != 3 or any(float(v) <= 0 for v in voxel_size_um):
        raise ValueError(f"voxel_size_um must be three positive sizes (dz, dy, dx) in µm, got "
                         f"{tuple(voxel_size_um)}")
    if not 0 < na < refractive_index:
        raise ValueError(f"na={na} must be positive and smaller than refractive_index="
                         f"{refractive_index}")
    if oversample < 1 or oversample % 2 == 0:
        raise ValueError(f"oversample must be a positive odd integer (so that the fine grid has "
                         f"a sample at each pixel centre), got {oversample}")
    nz, ny, nx = (int(s) for s in shape)
    dz, dy, dx = (float(v) for v in voxel_size_um)
    return (nz, ny, nx), (dz, dy, dx)


def _distinct_defocus_um(nz: int, dz: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct |defocus| values (µm) of the planes, and each plane's index into them.

    Plane nz // 2 is in focus (the centring `image_focal_planes` expects). The aberration-free
    intensity is symmetric in defocus, so each |defocus| is computed once (half the work).
    """
    return np.unique(np.abs(np.arange(nz) - nz // 2) * dz, return_inverse=True)


def _bin_pixels(fine: np.ndarray, oversample: int) -> np.ndarray:
    """Sum ``oversample²`` fine samples into each camera pixel, keeping the origin at [0, 0].

    The fine grid has its origin at index 0; rolling by half a pixel first makes every block
    centred on a camera-pixel centre, so binning models the pixel's area integration.
    """
    if oversample == 1:
        return fine
    half = oversample // 2
    fine = np.roll(fine, (half, half), axis=(-2, -1))
    *lead, fy, fx = fine.shape
    return fine.reshape(*lead, fy // oversample, oversample, fx // oversample,
                        oversample).sum(axis=(-3, -1))


def _pupil_and_kz(ny: int, nx: int, dy: float, dx: float, na: float, wavelength_um: float,
                  refractive_index: float) -> tuple[np.ndarray, np.ndarray]:
    """Pupil mask and axial frequency ``sqrt((n/λ)² − f²)`` (cycles/µm) on an FFT grid."""
    fy = fft.fftfreq(ny, d=dy)[:, None]
    fx = fft.fftfreq(nx, d=dx)[None, :]
    f2 = fy**2 + fx**2
    pupil = f2 <= (na / wavelength_um) ** 2
    kz = np.sqrt(np.maximum((refractive_index / wavelength_um) ** 2 - f2, 0.0))
    return pupil, kz


def _intensity_planes(offsets_um: np.ndarray, fine_shape: tuple[int, int],
                      fine_spacing: tuple[float, float], na: float, wavelength_um: float,
                      refractive_index: float) -> np.ndarray:
    """|field|² at each defocus on the fine periodic grid, each plane normalised to sum 1.

    Returns float32 ``(len(offsets_um), fy, fx)`` with the focus at index ``[.., 0, 0]``.
    """
    pupil, kz = _pupil_and_kz(*fine_shape, *fine_spacing, na, wavelength_um, refractive_index)
    # Single precision is ample for a PSF (phases of a few hundred rad keep ~1e-5 rad of
    # precision) and halves time and memory.
    phase = (2.0 * np.pi * offsets_um[:, None] * kz[pupil][None, :]).astype(np.float32)
    spectrum = np.zeros((len(offsets_um), *fine_shape), dtype=np.complex64)
    spectrum[:, pupil] = np.exp(1j * phase)
    field = fft.ifft2(spectrum, workers=-1)
    intensity = field.real**2 + field.imag**2
    # Every plane carries the same energy (|phase factor| = 1); dividing by the sum removes the
    # FFT scaling and makes each plane a unit-flux kernel.
    total = intensity.sum(axis=(-2, -1), keepdims=True, dtype=np.float64)
    return intensity / total.astype(np.float32)


def _plane_chunks(nz: int, fine_shape: tuple[int, int]) -> list[slice]:
    per_chunk = max(1, _CHUNK_VALUES // (fine_shape[0] * fine_shape[1]))
    return [slice(i, min(i + per_chunk, nz)) for i in range(0, nz, per_chunk)]


def widefield_psf(shape: Sequence[int], voxel_size_um: Sequence[float], *, na: float,
                  wavelength_um: float, refractive_index: float,
                  oversample: int = 3) -> np.ndarray:
    """Scalar 3D widefield PSF, periodic over the lateral window, every z-plane summing to 1.

    Args:
        shape: ``(nz, ny, nx)`` voxels. Plane ``nz // 2`` is in focus; plane ``k`` is defocused
            by ``(k − nz // 2)·dz``. Pixel ``(ny // 2, nx // 2)`` is on the optical axis.
        voxel_size_um: ``(dz, dy, dx)`` in µm.
        na: numerical aperture.
        wavelength_um: emission wavelength in vacuum, µm.
        refractive_index: immersion/sample refractive index.
        oversample: odd factor by which the field is sampled more finely than the pixels before
            squaring and binning: it avoids aliasing the intensity (bandwidth 2·NA/λ) and models
            the pixel area. 1 = point sampling.

    Returns:
        float32 ``(nz, ny, nx)``, dimensionless: the fraction of a point emitter's detected
        photons that lands in each camera pixel when focused ``(k − nz//2)·dz`` away.
    """
    (nz, ny, nx), (dz, dy, dx) = _check_geometry(shape, voxel_size_um, na, refractive_index,
                                                 oversample)
    fine_shape = (ny * oversample, nx * oversample)
    fine_spacing = (dy / oversample, dx / oversample)
    offsets, plane_of = _distinct_defocus_um(nz, dz)
    psf = np.empty((len(offsets), ny, nx), dtype=np.float32)
    for chunk in _plane_chunks(len(offsets), fine_shape):
        fine = _intensity_planes(offsets[chunk], fine_shape, fine_spacing, na, wavelength_um,
                                 refractive_index)
        psf[chunk] = fft.fftshift(_bin_pixels(fine, oversample), axes=(-2, -1))
    return psf[plane_of]


def _pinhole_otf(fine_shape: tuple[int, int], fine_spacing: tuple[float, float], radius_um: float
                 ) -> np.ndarray:
    """Transfer function of a unit-sum disc of `radius_um` (in sample space) on the fine grid."""
    fy, fx = fine_shape
    y = fft.fftfreq(fy, d=1.0 / fy)[:, None] * fine_spacing[0]
    x = fft.fftfreq(fx, d=1.0 / fx)[None, :] * fine_spacing[1]
    # `<=` keeps the centre sample, so a 0-AU pinhole is a point detector rather than nothing.
    disc = (y**2 + x**2 <= radius_um**2).astype(np.float32)
    return fft.rfft2(disc / disc.sum(), workers=-1)


def confocal_psf(shape: Sequence[int], voxel_size_um: Sequence[float], *, na: float,
                 excitation_wavelength_um: float, emission_wavelength_um: float,
                 refractive_index: float, pinhole_au: float = 1.0,
                 oversample: int = 3) -> np.ndarray:
    """Scalar 3D confocal PSF: excitation PSF × (detection PSF ⊛ pinhole disc), per plane.

    Both factors are the widefield model of :func:`widefield_psf` (each plane of unit flux, i.e.
    all excitation light crosses every plane and all collected light reaches the pinhole plane);
    the pinhole is a disc of diameter ``pinhole_au`` Airy units projected into the sample
    (radius ``pinhole_au · 0.61 λ_em / NA``). The product is formed on the oversampled grid
    before pixel binning.

    Args:
        shape: ``(nz, ny, nx)``; centring as in :func:`widefield_psf`.
        voxel_size_um: ``(dz, dy, dx)`` in µm.
        na: numerical aperture.
        excitation_wavelength_um: laser wavelength in vacuum, µm.
        emission_wavelength_um: emission wavelength in vacuum, µm.
        refractive_index: immersion/sample refractive index.
        pinhole_au: pinhole diameter in Airy units; 0 = point detector.
        oversample: odd oversampling factor, as in :func:`widefield_psf`.

    Returns:
        float32 ``(nz, ny, nx)``, dimensionless; the in-focus plane ``nz // 2`` sums to 1 and the
        others to less (the rejected out-of-focus light).
    """
    (nz, ny, nx), (dz, dy, dx) = _check_geometry(shape, voxel_size_um, na, refractive_index,
                                                 oversample)
    if pinhole_au < 0:
        raise ValueError(f"pinhole_au must be >= 0 Airy units, got {pinhole_au}")
    fine_shape = (ny * oversample, nx * oversample)
    fine_spacing = (dy / oversample, dx / oversample)
    offsets, plane_of = _distinct_defocus_um(nz, dz)
    pinhole = _pinhole_otf(fine_shape, fine_spacing, pinhole_au * 0.61 * emission_wavelength_um
                           / na)
    psf = np.empty((len(offsets), ny, nx), dtype=np.float32)
    for chunk in _plane_chunks(len(offsets), fine_shape):
        excitation = _intensity_planes(offsets[chunk], fine_shape, fine_spacing, na,
                                       excitation_wavelength_um, refractive_index)
        detection = _intensity_planes(offsets[chunk], fine_shape, fine_spacing, na,
                                      emission_wavelength_um, refractive_index)
        detection = fft.irfft2(fft.rfft2(detection, workers=-1) * pinhole, s=fine_shape,
                               workers=-1)
        psf[chunk] = fft.fftshift(_bin_pixels(excitation * detection, oversample), axes=(-2, -1))
    # The product of two unit-flux planes has flux ~1/(area of the in-focus spot); scale so the
    # in-focus plane has unit flux like the widefield PSF.
    psf /= psf[0].sum(dtype=np.float64)  # distinct defocus 0 comes first
    return psf[plane_of]


def defocus_blur_radius_um(defocus_um: float, na: float, refractive_index: float) -> float:
    """Geometric radius (µm) of the widefield blur disc of a point ``defocus_um`` out of focus.

    Light leaves the focus within the half-angle ``asin(NA / n)``; the defocused disc radius is
    ``|defocus| · tan(asin(NA / n))``. Use it to size lateral padding.
    """
    half_angle = np.arcsin(na / refractive_index)
    return float(abs(defocus_um) * np.tan(half_angle))


def image_focal_planes(volume: np.ndarray, psf: np.ndarray, focus: Sequence[int],
                       *, volume_spectrum: np.ndarray | None = None) -> np.ndarray:
    """Camera images of a volume focused at given planes: a 3-D convolution evaluated at `focus`.

    ``out[..., i] = Σ_z volume[..., z] ⊛ psf[c + z − focus[i]]`` with ``c = P // 2``, where ⊛ is
    circular 2-D convolution over the lateral window (done by FFT). With a widefield PSF (planes
    summing to 1) each image sums to the total of the volume.

    Args:
        volume: ``(..., Z, Y, X)`` emitter density per voxel (e.g. photons per exposure).
        psf: ``(P, Y, X)`` PSF from this module, in-focus plane at ``P // 2``, same lateral shape
            as the volume. It must reach every defocus ``z − f`` that occurs: ``P = 2·Z − 1``
            always does; ``P = Z`` does for ``f = Z // 2`` (the central plane).
        focus: indices of the in-focus planes (0 ≤ f < Z).
        volume_spectrum: optional precomputed ``scipy.fft.rfft2(volume)`` to reuse across PSFs.

    Returns:
        float32 ``(..., len(focus), Y, X)`` in the units of `volume` per pixel.
    """
    *lead, nz, ny, nx = volume.shape
    n_psf = psf.shape[0]
    if psf.ndim != 3 or psf.shape[1:] != (ny, nx):
        raise ValueError(f"psf must be (P, {ny}, {nx}) to match the volume's lateral shape "
                         f"{(ny, nx)}, got {psf.shape}; compute the PSF on the volume's grid")
    centre = n_psf // 2
    for f in focus:
        if not 0 <= f < nz:
            raise ValueError(f"focus plane {f} is outside the volume's {nz} planes")
        first, last = centre - f, centre - f + nz - 1
        if first < 0 or last >= n_psf:
            raise ValueError(f"a PSF of {n_psf} planes cannot image plane {f} of a {nz}-plane "
                             f"volume; it needs {max(f, nz - 1 - f)} planes of defocus on each "
                             f"side of its centre")
    spectrum = (fft.rfft2(volume.astype(np.float32, copy=False), workers=-1)
                if volume_spectrum is None else volume_spectrum)
    otf = fft.rfft2(fft.ifftshift(psf, axes=(-2, -1)), workers=-1)
    out = np.empty((*lead, len(focus), ny, nx), dtype=np.float32)
    for i, f in enumerate(focus):
        # Plane z of the volume sits z − f away from the focus: PSF plane centre + z − f.
        kernel = otf[centre - f: centre - f + nz]
        out[..., i, :, :] = fft.irfft2(np.einsum("...zyx,zyx->...yx", spectrum, kernel),
                                       s=(ny, nx), workers=-1)
    return out
