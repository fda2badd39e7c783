"""Background subtraction + Richardson–Lucy deconvolution: the classical, non-learned baseline
(a stand-in for commercial widefield deconvolution).

Richardson (JOSA 1972) and Lucy (AJ 1974): for data d ≥ 0 blurred by a PSF h (sum 1), iterate

    u ← u · (h̃ ⊛ (d / (h ⊛ u))),   h̃(r) = h(−r),

which converges towards the maximum-likelihood object under Poisson noise. The 2-D PSF is the
in-focus plane of the scalar widefield PSF of :mod:`hazematching.data.psf` (an Airy pattern
integrated over the pixels) for the objective and pixel size in the options.

It runs on the normalised tiles the prediction engine passes in, where intensities may be
negative. RL needs non-negative data, so the background b is subtracted and the rest clipped at
zero: ``d = max(y − b, 0)``. b is either a large-scale Gaussian blur of y (the smooth out-of-focus
haze) or a low percentile of the tile (a constant offset; percentile 0 = the tile minimum, the
smallest shift that makes the data non-negative). The output is the deconvolved d, i.e. in the
input's normalised units with the background at ~0; it is not mapped to the target's
intensities, so compare it with affine-invariant metrics.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from hazematching.config import ModelConfig
from hazematching.data.psf import widefield_psf
from hazematching.methods import register
from hazematching.methods.base import Method
from hazematching.methods.indi import degraded_image

#: Floor of the re-blurred estimate in the RL ratio (normalised intensities are O(1)): keeps the
#: division finite where the estimate has died out.
_EPS = 1e-6


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with mirrored edges: (B, 1, H, W) → (B, 1, H, W).

    `sigma` is in pixels; the kernel reaches 3σ, shortened (and renormalised) on images too small
    to mirror that far.
    """
    radius = min(math.ceil(3 * sigma), x.shape[-2] - 1, x.shape[-1] - 1)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))


def richardson_lucy(image: Tensor, psf: Tensor, iterations: int) -> Tensor:
    """Richardson–Lucy deconvolution of a batch, with FFT convolutions.

    Args:
        image: (B, 1, H, W) non-negative data.
        psf: (k, k) non-negative kernel summing to 1, centred at (k // 2, k // 2), k odd and
            k // 2 < min(H, W).
        iterations: number of RL updates.

    Returns:
        (B, 1, H, W) non-negative estimate in the units of `image` (flux is preserved).
    """
    h, w = image.shape[-2:]
    r = psf.shape[-1] // 2
    if r >= min(h, w):
        raise ValueError(f"the PSF ({psf.shape[-1]} px) is too large for {h}×{w} tiles; lower "
                         f"psf_size or raise sampling.tile_size")
    # Mirror the edges so that the circular FFT convolution does not mix opposite borders.
    data = F.pad(image, (r, r, r, r), mode="reflect")
    size = data.shape[-2:]
    kernel = torch.zeros(size, device=image.device, dtype=image.dtype)
    kernel[:psf.shape[-2], :psf.shape[-1]] = psf
    otf = torch.fft.rfft2(kernel.roll((-r, -r), dims=(0, 1)))

    def convolve(x: Tensor, transfer: Tensor) -> Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x) * transfer, s=size)

    estimate = data.mean(dim=(-2, -1), keepdim=True).expand_as(data).clone()
    for _ in range(iterations):
        ratio = data / convolve(estimate, otf).clamp_min(_EPS)
        # FFT round-off can dip below zero where the estimate is ~0; RL's estimate is >= 0.
        estimate = (estimate * convolve(ratio, otf.conj())).clamp_min(0)
    return estimate[..., r:r + h, r:r + w]


class RichardsonLucyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(20, ge=1, description="Richardson–Lucy iterations.")
    na: float = Field(1.4, gt=0.0, description="Numerical aperture of the objective.")
    refractive_index: float = Field(1.518, ge=1.0, description="Immersion refractive index.")
    wavelength_um: float = Field(0.52, gt=0.0, description="Emission wavelength, µm.")
    pixel_size_um: float = Field(0.1, gt=0.0, description="Pixel size in the sample, µm; set it "
                                 "to your data's.")
    psf_size: int = Field(15, ge=3, description="Side of the PSF kernel (odd, px).")
    background: Literal["gaussian", "percentile"] = Field(
        "gaussian", description="'gaussian': a large-scale blur of the input (the out-of-focus "
        "haze); 'percentile': a constant low percentile per tile.")
    background_sigma_px: float = Field(16.0, gt=0.0, description="Std of the Gaussian "
                                       "background estimate, px.")
    background_percentile: float = Field(1.0, ge=0.0, le=100.0)

    @field_validator("psf_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"psf_size must be odd so that the PSF has a centre pixel, got {v}")
        return v


@register
class RichardsonLucy(Method):
    """Non-learned: background subtraction, then RL with the widefield PSF; deterministic."""

    name = "richardson_lucy"
    trainable = False
    Options = RichardsonLucyOptions

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        o = self.options
        k = o.psf_size
        psf = widefield_psf((1, k, k), (1.0, o.pixel_size_um, o.pixel_size_um), na=o.na,
                            wavelength_um=o.wavelength_um,
                            refractive_index=o.refractive_index)[0]
        # Derived from the options, so not part of the saved weights; moves with .to(device).
        self.register_buffer("psf", torch.from_numpy(psf), persistent=False)

    def subtract_background(self, y: Tensor) -> Tensor:
        """max(y − b, 0) for (B, 1, H, W) y, with b per the `background` option."""
        o = self.options
        if o.background == "gaussian":
            background = gaussian_blur(y, o.background_sigma_px)
        else:
            background = torch.quantile(y.flatten(1), o.background_percentile / 100, dim=1)
            background = background.view(-1, 1, 1, 1)
        return (y - background).clamp_min(0)

    def predict_batch(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Deconvolved, background-free first input channel: (B, C, H, W) → (B, 1, H, W)."""
        # The multiplicative updates need float32 FFTs: opt out of the engine's bf16 autocast.
        with torch.autocast(cond.device.type, enabled=False):
            data = self.subtract_background(degraded_image(cond).float())
            return richardson_lucy(data, self.psf.float(), self.options.iterations)

    def network_calls(self) -> int:
        """0: no network is evaluated."""
        return 0
