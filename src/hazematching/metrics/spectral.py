"""Fourier-domain measures that need no learned weights: FRC and the power-spectrum ratio.

Frequencies are in cycles per pixel (Nyquist = 0.5). Rings are one frequency step
``1 / N`` wide (``N = min(Y, X)``): ring k holds the frequencies whose radius rounds to
``k / N`` and is reported there. Rings 1 .. N/2 are used: ring 0 (the mean) is skipped and the
corners of the spectrum, beyond Nyquist along the diagonal, are left out.

Both measures window the images by default with a Tukey (tapered cosine) window so that the
jump between opposite image borders does not add a bright cross of fake high-frequency content
that both images share. Spectra are computed with real FFTs (half plane) and every ring sum
weights the columns that stand for two conjugate frequencies twice, so the sums equal the
full-plane sums. Hand-written with numpy: no maintained library offers FRC or radial spectra
for batches of images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal.windows import tukey

FRC_THRESHOLD = 1.0 / 7.0
# Share of each border that the Tukey window tapers (a common choice for FRC).
_TUKEY_ALPHA = 0.25


@dataclass(frozen=True)
class Spectra:
    """Ring statistics of a batch of predictions against one target.

    Attributes:
        frequencies: ``(R,)`` ring frequencies in cycles/pixel, ``1/N .. 0.5``.
        cross: ``(B, R)`` ring sums of Re(P·T*).
        power_pred: ``(B, R)`` ring sums of |P|².
        power_target: ``(R,)`` ring sums of |T|².
        counts: ``(R,)`` number of (full-plane) frequencies per ring.
    """

    frequencies: np.ndarray
    cross: np.ndarray
    power_pred: np.ndarray
    power_target: np.ndarray
    counts: np.ndarray

    def frc(self) -> np.ndarray:
        """``(B, R)`` Fourier ring correlation in [-1, 1]."""
        denom = np.sqrt(self.power_pred * self.power_target[None])
        return np.divide(self.cross, denom, out=np.zeros_like(self.cross), where=denom > 0)

    def radial_power(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean power per frequency: ``(B, R)`` for predictions and ``(R,)`` for the target."""
        return self.power_pred / self.counts, self.power_target / self.counts


def _window(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(tukey(shape[0], _TUKEY_ALPHA), tukey(shape[1], _TUKEY_ALPHA))


def _ring_index(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Ring of each rfft2 coefficient, its full-plane weight (1 or 2), and the ring count."""
    ny, nx = shape
    n = min(ny, nx)
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    ring = np.rint(np.hypot(fy, fx) * n).astype(np.int64)
    weight = np.full(fx.shape[1], 2.0)
    weight[0] = 1.0  # the zero-frequency column has no conjugate partner in the half plane
    if nx % 2 == 0:
        weight[-1] = 1.0  # nor has the Nyquist column of an even width
    return ring, np.broadcast_to(weight, ring.shape), n // 2


def spectra(preds: np.ndarray, target: np.ndarray, *, apodize: bool = True,
            name: str = "image") -> Spectra:
    """Ring sums of cross and auto power spectra (the shared work of FRC and power ratio).

    Args:
        preds: ``(B, Y, X)`` or ``(Y, X)`` float predictions.
        target: ``(Y, X)`` float target.
        apodize: multiply both images by a Tukey window before the FFT.
        name: image name used in error messages.
    """
    target = np.asarray(target, dtype=np.float64)
    preds = np.asarray(preds, dtype=np.float64)
    if target.ndim != 2 or preds.shape[-2:] != target.shape:
        raise ValueError(f"{name}: expected 2-D images of one shape, got prediction "
                         f"{preds.shape} and target {target.shape}")
    if min(target.shape) < 8:
        raise ValueError(f"{name}: FRC needs images of at least 8×8 pixels, got {target.shape}")
    preds = preds.reshape(-1, *target.shape)
    win = _window(target.shape) if apodize else np.ones(target.shape)
    # Remove the mean before windowing so the window does not leak the DC level into low rings.
    ft = np.fft.rfft2((target - target.mean()) * win)
    fp = np.fft.rfft2((preds - preds.mean(axis=(1, 2), keepdims=True)) * win)
    ring, weight, n_rings = _ring_index(target.shape)
    keep = (ring >= 1) & (ring <= n_rings)
    w = weight[keep]
    b = len(preds)
    # One bincount for the whole batch: prediction i's rings are offset by i * n_rings.
    idx = (ring[keep] - 1)[None, :] + n_rings * np.arange(b)[:, None]

    def ring_sums(values: np.ndarray) -> np.ndarray:
        """(B, K) values at the kept coefficients → (B, n_rings) weighted ring sums."""
        return np.bincount(idx.ravel(), weights=(values * w).ravel(),
                           minlength=b * n_rings).reshape(b, n_rings)

    fp_k, ft_k = fp[:, keep], ft[keep]
    cross = ring_sums(fp_k.real * ft_k.real + fp_k.imag * ft_k.imag)  # Re(P · conj(T))
    power_pred = ring_sums(fp_k.real**2 + fp_k.imag**2)
    power_target = np.bincount(idx[0], weights=w * (ft_k.real**2 + ft_k.imag**2),
                               minlength=n_rings)
    counts = np.bincount(idx[0], weights=w, minlength=n_rings)
    freqs = np.arange(1, n_rings + 1) / min(target.shape)
    return Spectra(freqs, cross, power_pred, power_target, counts)


def frc_curve(pred: np.ndarray, target: np.ndarray, *,
              apodize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation between prediction(s) and a target.

    Args:
        pred: ``(Y, X)`` or ``(B, Y, X)`` float prediction(s).
        target: ``(Y, X)`` float target.
        apodize: apply a Tukey window first (see module docstring).

    Returns:
        ``(frequencies, frc)``: ``(R,)`` cycles/pixel and the FRC in [-1, 1], ``(R,)`` for a
        single prediction or ``(B, R)`` for a batch.
    """
    sp = spectra(pred, target, apodize=apodize)
    curve = sp.frc()
    return sp.frequencies, curve[0] if np.ndim(pred) == 2 else curve


def frc_crossing(frequencies: np.ndarray, frc: np.ndarray,
                 threshold: float = FRC_THRESHOLD) -> np.ndarray:
    """Frequency where each FRC curve first drops below `threshold` (the FRC resolution).

    The crossing is linearly interpolated between the last ring above and the first ring below
    the threshold. A curve that never drops below it is resolved up to the sampling limit and
    gets the Nyquist frequency 0.5; one already below at the first ring gets that ring's
    frequency.

    Args:
        frequencies: ``(R,)`` increasing ring frequencies (cycles/pixel).
        frc: ``(R,)`` or ``(B, R)`` FRC values.
        threshold: e.g. 1/7 ≈ 0.143.

    Returns:
        ``(B,)`` (or 0-d for one curve) crossing frequencies in cycles/pixel; the resolution is
        ``1 / f`` pixels or ``pixel_size / f`` in the pixel-size unit.
    """
    curves = np.atleast_2d(frc)
    below = curves < threshold
    out = np.full(len(curves), 0.5)
    for i, (c, b) in enumerate(zip(curves, below)):
        if not b.any():
            continue
        k = int(np.argmax(b))
        if k == 0:
            out[i] = frequencies[0]
            continue
        f0, f1, c0, c1 = frequencies[k - 1], frequencies[k], c[k - 1], c[k]
        out[i] = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)
    return out if np.ndim(frc) == 2 else out[0]


def power_ratio_from(sp: Spectra, cutoff: float) -> np.ndarray:
    """``(B,)`` prediction/target power summed over rings above `cutoff` cycles/pixel."""
    band = sp.frequencies > cutoff
    if not band.any():
        raise ValueError(f"power-ratio cutoff {cutoff} cycles/pixel leaves no ring below Nyquist "
                         f"(0.5); choose a cutoff in (0, 0.5)")
    denom = sp.power_target[band].sum()
    if denom <= 0:
        raise ValueError(f"the target has no power above {cutoff} cycles/pixel; the power "
                         f"ratio is undefined")
    return sp.power_pred[:, band].sum(axis=1) / denom


def power_spectrum_ratio(pred: np.ndarray, target: np.ndarray, *, cutoff: float = 0.25,
                         apodize: bool = True) -> float | np.ndarray:
    """High-frequency power of the prediction relative to the target.

    ``sum_{f > cutoff} P_pred(f) / sum_{f > cutoff} P_target(f)`` over rings up to Nyquist.
    1 = as much fine detail (and noise) as the target; < 1 = over-smoothed; > 1 = extra
    high-frequency content (noise or hallucinated texture).

    Args:
        pred: ``(Y, X)`` or ``(B, Y, X)`` float prediction(s).
        target: ``(Y, X)`` float target.
        cutoff: lower frequency bound in cycles/pixel, in (0, 0.5).
        apodize: apply a Tukey window first.

    Returns:
        A float for one prediction, ``(B,)`` float64 for a batch.
    """
    ratio = power_ratio_from(spectra(pred, target, apodize=apodize), cutoff)
    return float(ratio[0]) if np.ndim(pred) == 2 else ratio


#: The band (cycles/pixel) where dehazing restores fine texture: above the widefield's in-focus
#: pass band's shoulder, below the ring where camera noise dominates the confocal target.
HF_BAND = (0.15, 0.45)


def band_power_ratio(preds: np.ndarray, target: np.ndarray, *,
                     band: tuple[float, float] = HF_BAND, apodize: bool = True) -> np.ndarray:
    """``(B,)`` power of each prediction relative to the target's, summed over the rings with
    ``band[0] < f <= band[1]`` cycles/pixel.

    1 = the target's amount of fine texture; < 1 over-smoothed (an MMSE estimate is, by
    design); the gate for a posterior sample is to stay near the reference sampler's ratio.

    Args:
        preds: ``(B, Y, X)`` or ``(Y, X)`` float predictions.
        target: ``(Y, X)`` float target.
    """
    lo, hi = band
    if not 0 <= lo < hi <= 0.5:
        raise ValueError(f"band must satisfy 0 <= low < high <= 0.5 cycles/pixel, got {band}")
    sp = spectra(preds, target, apodize=apodize)
    sel = (sp.frequencies > lo) & (sp.frequencies <= hi)
    if not sel.any():
        raise ValueError(f"no frequency ring of a {np.shape(target)} image falls in {band}")
    denom = sp.power_target[sel].sum()
    if denom <= 0:
        raise ValueError(f"the target has no power in {band} cycles/pixel")
    return sp.power_pred[:, sel].sum(axis=1) / denom
