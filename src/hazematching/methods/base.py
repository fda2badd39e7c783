"""The shared contract of every restoration method.

A method owns its networks, its training objective and its prediction rule; everything else —
data, the training loop, tiling, I/O, metrics — is shared and never re-implemented per method.
Tensors are normalised intensities: targets (B, 1, H, W), conditions (B, C, H, W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from hazematching.config import ModelConfig, SamplingConfig


class NoOptions(BaseModel):
    """A method without options of its own."""

    model_config = ConfigDict(extra="forbid")


class Method(nn.Module):
    """Base class: subclass, set the class attributes, implement the two abstract methods."""

    name: ClassVar[str]
    #: True if :meth:`predict_batch` draws posterior samples (MMSE = their mean).
    stochastic: ClassVar[bool] = False
    #: False for methods without learned parameters (the training loop is skipped).
    trainable: ClassVar[bool] = True
    #: True for methods that drive their own optimisers (e.g. a GAN): see :meth:`manual_step`.
    manual_optimization: ClassVar[bool] = False
    #: Pydantic model validating ``config.method_options``.
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: True if the method's only randomness is one standard-normal field shaped like its output,
    #: which the predictor may supply through :meth:`posterior_batch`: then one field per image
    #: is cut into the tiles, and a stitched sample is one coherent sample across tile seams.
    takes_noise: ClassVar[bool] = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.options: Any = self.Options.model_validate(config.method_options)

    @classmethod
    def fixed_sampling(cls, config: ModelConfig) -> dict[str, Any]:
        """``sampling`` fields that the trained weights fix, {field: value} (e.g. the grid of a
        distilled flow map); a config must hold these values. Default: none."""
        return {}

    def training_loss(self, target: Tensor, cond: Tensor) -> Tensor:
        """Scalar training loss for a batch of normalised targets (B,1,H,W) and conditions."""
        raise NotImplementedError

    def validation_loss(self, target: Tensor, cond: Tensor) -> Tensor:
        """Scalar loss used to pick the best checkpoint; defaults to the training loss."""
        return self.training_loss(target, cond)

    def predict_batch(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One prediction (B, 1, H, W) per condition (B, C, H, W), normalised units.

        Stochastic methods return one posterior sample per row, drawn with `generator`.
        """
        raise NotImplementedError

    def posterior_batch(self, cond: Tensor, noise: Tensor,
                        sampling: SamplingConfig | None = None) -> tuple[Tensor, Tensor | None]:
        """One posterior sample per row from the given standard-normal `noise` (B, 1, H, W),
        and a cheap estimate of the posterior mean from the same draw, or None.

        Only methods with :attr:`takes_noise` implement it; both outputs are (B, 1, H, W).
        `sampling` (default ``config.sampling``) carries the solver settings the predictor was
        asked for.
        """
        raise NotImplementedError

    def network_calls(self) -> int:
        """Network evaluations per :meth:`predict_batch` call (for throughput accounting)."""
        return 1

    def configure_optimizers(self) -> Any:
        """Optimiser(s) in any form Lightning accepts; defaults to Adam on all parameters."""
        t = self.config.training
        return torch.optim.Adam(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def manual_step(self, module: pl.LightningModule, target: Tensor, cond: Tensor) -> dict[str,
                                                                                        Tensor]:
        """One training step for methods with ``manual_optimization``; returns losses to log."""
        raise NotImplementedError


def randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise on `like`'s device and dtype, drawn from `generator` if given."""
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


PixelLoss = Literal["mse", "l1"]


def pixel_loss(kind: PixelLoss, prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared ('mse') or mean absolute ('l1') error of two (B, 1, H, W) tensors.

    Computed in float32 so that bf16 network outputs under autocast do not round the loss.
    """
    loss = F.mse_loss if kind == "mse" else F.l1_loss
    return loss(prediction.float(), target.float())
