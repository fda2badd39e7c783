"""ESRGAN-style adversarial regression (Wang et al., ECCV Workshops 2018, arXiv 1809.00219).

Generator: the same-size RRDB network (:class:`~hazematching.nets.RRDBNet`). Critic: a PatchGAN
discriminator (:class:`~hazematching.nets.PatchDiscriminator`) that sees target-sized images only,
as ESRGAN's discriminator does. Losses, per ESRGAN:

* generator: ``pixel_weight · L_pix(G(y), x) + adv_weight · L_G^Ra (+ perceptual_weight · L_VGG)``
  (L_pix: the ``loss`` option, L1 as in ESRGAN)
* discriminator: ``L_D^Ra``

with the relativistic average GAN loss (Jolicoeur-Martineau 2018, see
:func:`relativistic_average_loss`). The default weights (1, 0.1, 0) follow Real-ESRGAN (Wang et
al. 2021); ESRGAN's own λ = 5e-3, η = 1e-2 are relative to a unit-weight VGG loss. The VGG19
perceptual loss (conv5_4 before activation) is optional: it needs torchvision and the ImageNet
weights already in the torch hub cache — nothing is downloaded — and fails at the first training
step with a clear message otherwise.

The two networks are trained alternately with their own Adam optimisers through
:meth:`Method.manual_step` (Lightning's manual optimisation, which counts one global step per
optimiser step, i.e. two per batch). The validation loss is the generator's pixel loss, and
prediction is one deterministic generator pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from hazematching.config import ModelConfig
from hazematching.methods import register
from hazematching.methods.base import pixel_loss
from hazematching.methods.regression import Regression, RegressionOptions
from hazematching.nets import PatchDiscriminator, RRDBNet

if TYPE_CHECKING:
    import lightning.pytorch as pl


class ESRGANOptions(RegressionOptions):
    """Network sizes default to a CPU-trainable model; the paper's generator is 64 / 23 / 32."""

    n_feats: int = Field(32, ge=1, description="Generator feature channels.")
    n_blocks: int = Field(4, ge=1, description="RRDB blocks in the generator.")
    growth: int = Field(16, ge=1, description="Growth channels of the dense blocks.")
    disc_feats: int = Field(32, ge=1, description="Discriminator channels in its first layer.")
    disc_layers: int = Field(3, ge=1, description="Strided discriminator layers (3: 70-px "
                             "patches; the patch size must be at least 3·2**disc_layers).")
    pixel_weight: float = Field(1.0, ge=0.0, description="Weight of the pixel loss (`loss`).")
    adv_weight: float = Field(0.1, ge=0.0, description="Weight of the adversarial loss.")
    perceptual_weight: float = Field(0.0, ge=0.0, description="Weight of the VGG19 perceptual "
                                     "loss; > 0 needs cached ImageNet VGG19 weights.")


def relativistic_average_loss(favoured: Tensor, other: Tensor) -> Tensor:
    """Relativistic average GAN loss under which `favoured` should look more real than `other`.

    ``−E[log σ(C(a) − E C(b))] − E[log(1 − σ(C(b) − E C(a)))]`` with ``a`` = favoured and ``b`` =
    other; the expectation over the opposite set is taken over all its logits (batch and patches).
    The discriminator minimises it with (real, fake), the generator with (fake, real).

    Args:
        favoured: critic logits C(a), any shape (here (B, 1, H', W')).
        other: critic logits C(b), same shape.

    Returns:
        Scalar loss (nats), float32.
    """
    favoured, other = favoured.float(), other.float()
    a = favoured - other.mean()
    b = other - favoured.mean()
    return (F.binary_cross_entropy_with_logits(a, torch.ones_like(a))
            + F.binary_cross_entropy_with_logits(b, torch.zeros_like(b)))


def vgg19_features() -> nn.Module:
    """Frozen ImageNet VGG19 up to conv5_4 before its ReLU (ESRGAN's perceptual features).

    Raises:
        ValueError: torchvision is missing or the weights are not in the torch hub cache.
    """
    try:
        from torchvision.models import VGG19_Weights, vgg19
    except ImportError:
        raise ValueError("the perceptual loss needs torchvision (pip install "
                         "'hazematching[metrics]'); or set method_options.perceptual_weight=0"
                         ) from None
    weights = VGG19_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not cached.is_file():
        raise ValueError(f"the perceptual loss needs the ImageNet VGG19 weights at {cached} and "
                         f"does not download them; place {weights.url} there or set "
                         f"method_options.perceptual_weight=0")
    # features[34] is conv5_4; ESRGAN compares features before the activation that follows.
    net = vgg19(weights=weights).features[:35].eval()
    net.requires_grad_(False)
    return net


@register
class ESRGAN(Regression):
    """RRDB generator trained with pixel + relativistic adversarial (+ perceptual) losses."""

    name = "gan"
    manual_optimization = True
    Options = ESRGANOptions

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        o = self.options
        self.discriminator = PatchDiscriminator(1, n_feats=o.disc_feats, n_layers=o.disc_layers)
        if config.data.patch_size < self.discriminator.min_size:
            raise ValueError(f"data.patch_size={config.data.patch_size} is too small for a "
                             f"discriminator with disc_layers={o.disc_layers}; it needs >= "
                             f"{self.discriminator.min_size} px")
        # Loaded at the first training step, not here, so that a trained model loads for
        # prediction without the VGG weights; held in a tuple so that it is not a submodule and
        # stays out of the saved weights.
        self._vgg: tuple[nn.Module, ...] = ()

    def build_network(self) -> nn.Module:
        o = self.options
        return RRDBNet(self.config.in_channels, 1, n_feats=o.n_feats, n_blocks=o.n_blocks,
                       growth=o.growth)

    def perceptual_loss(self, fake: Tensor, target: Tensor) -> Tensor:
        """L1 distance of VGG19 conv5_4 features of (B, 1, H, W) images.

        The grey image is repeated over VGG's three colour channels; z-scored intensities are
        already close to the ImageNet-standardised inputs VGG expects.

        Raises:
            ValueError: the VGG19 weights are not available (see :func:`vgg19_features`).
        """
        if not self._vgg:
            self._vgg = (vgg19_features(),)
        vgg = self._vgg[0].to(fake.device)
        return F.l1_loss(vgg(fake.expand(-1, 3, -1, -1)).float(),
                         vgg(target.expand(-1, 3, -1, -1)).float())

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """[generator Adam, discriminator Adam], both at ``training.lr``."""
        t = self.config.training
        return [torch.optim.Adam(m.parameters(), lr=t.lr, weight_decay=t.weight_decay)
                for m in (self.net, self.discriminator)]

    def manual_step(self, module: pl.LightningModule, target: Tensor, cond: Tensor
                    ) -> dict[str, Tensor]:
        """One generator update, then one discriminator update, on a batch.

        Args:
            module: the Lightning module driving training (its optimisers and backward).
            target: (B, 1, H, W) normalised clean images.
            cond: (B, C, H, W) normalised widefield images.

        Returns:
            Detached scalars: 'loss' (total generator loss), 'pixel', 'adv', 'disc'
            (and 'perceptual' when used).
        """
        o = self.options
        opt_g, opt_d = module.optimizers()

        module.toggle_optimizer(opt_g)  # freezes the discriminator for the generator update
        fake = self.net(cond)
        with torch.no_grad():
            real_logits = self.discriminator(target)
        losses = {"pixel": pixel_loss(o.loss, fake, target),
                  "adv": relativistic_average_loss(self.discriminator(fake), real_logits)}
        total = o.pixel_weight * losses["pixel"] + o.adv_weight * losses["adv"]
        if o.perceptual_weight > 0:
            losses["perceptual"] = self.perceptual_loss(fake, target)
            total = total + o.perceptual_weight * losses["perceptual"]
        self._update(module, opt_g, total)
        module.untoggle_optimizer(opt_g)

        module.toggle_optimizer(opt_d)
        disc = relativistic_average_loss(self.discriminator(target),
                                         self.discriminator(fake.detach()))
        self._update(module, opt_d, disc)
        module.untoggle_optimizer(opt_d)
        return {"loss": total.detach(), "disc": disc.detach(),
                **{k: v.detach() for k, v in losses.items()}}

    def _update(self, module: pl.LightningModule, optimizer: torch.optim.Optimizer,
                loss: Tensor) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"GAN loss became {loss.item()} at step "
                                     f"{module.global_step}; lower training.lr or adv_weight")
        optimizer.zero_grad()
        module.manual_backward(loss)
        # Lightning clips only under automatic optimisation; apply training.grad_clip here.
        clip = self.config.training.grad_clip
        if clip is not None:
            module.clip_gradients(optimizer, gradient_clip_val=clip,
                                  gradient_clip_algorithm="norm")
        optimizer.step()
