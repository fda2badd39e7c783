"""MIMO-UNet baseline (Cho et al., ICCV 2021): direct regression with a multi-input
multi-output U-Net (:class:`~hazematching.nets.MIMOUNet`), trained on all its output scales.

The paper's loss, over the K = 3 outputs S_k and the target bilinearly downsampled to each
scale, T_k:

    L = Σ_k  mean|S_k − T_k|  +  λ · Σ_k  mean|F(S_k) − F(T_k)|,   λ = 0.1,

where F is the 2-D FFT and the absolute difference of a complex spectrum is taken on its real and
imaginary parts (the multi-scale frequency reconstruction loss). F is unnormalised, as in the
paper, so the frequency term's share grows with the patch side (for white-noise errors at
λ = 0.1 it is 2× the content term at 32 px, 4.5× at 64 px, 18× at 256 px). Prediction is the full-resolution output, one deterministic pass.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from hazematching.config import ModelConfig
from hazematching.methods import register
from hazematching.methods.regression import Regression
from hazematching.nets import MIMOUNet
from hazematching.nets.layers import check_multiple
from hazematching.nets.mimo_unet import image_pyramid


class MIMOUNetOptions(BaseModel):
    """Defaults are the paper's MIMO-UNet (6.8 M parameters); shrink for a CPU."""

    model_config = ConfigDict(extra="forbid")

    channels: int = Field(32, ge=4, description="Feature channels at full resolution (×2 and "
                          "×4 at the coarser levels).")
    n_res_blocks: int = Field(8, ge=0, description="Residual blocks per encoder and decoder "
                              "level (MIMO-UNet+: 20).")
    frequency_weight: float = Field(0.1, ge=0.0, description="Weight λ of the frequency loss.")


def frequency_l1(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean absolute difference of the real and imaginary parts of the 2-D FFTs of two
    (B, C, H, W) images (float32; FFTs do not run in bf16)."""
    diff = torch.fft.rfft2(prediction.float()) - torch.fft.rfft2(target.float())
    return torch.view_as_real(diff).abs().mean()


@register
class MIMOUNetRegression(Regression):
    """MIMO-UNet: multi-scale in and out, multi-scale L1 + frequency loss."""

    name = "mimo_unet"
    Options = MIMOUNetOptions

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        check_multiple(config.data.patch_size, MIMOUNet.multiple, "data.patch_size (mimo_unet)")

    def build_network(self) -> nn.Module:
        o = self.options
        return MIMOUNet(self.config.in_channels, 1, channels=o.channels,
                        n_res_blocks=o.n_res_blocks)

    def training_loss(self, target: Tensor, cond: Tensor) -> Tensor:
        """Multi-scale content + λ·frequency loss; target (B, 1, H, W), cond (B, C, H, W)."""
        outputs = self.net.forward_scales(cond)
        loss = torch.zeros((), device=target.device)
        for out, ref in zip(outputs, image_pyramid(target), strict=True):
            loss = loss + (out.float() - ref.float()).abs().mean()
            if self.options.frequency_weight:
                loss = loss + self.options.frequency_weight * frequency_l1(out, ref)
        return loss
