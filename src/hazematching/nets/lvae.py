"""A conditional hierarchical (ladder) VAE in the style of HDN (Prakash et al., ICLR 2022) and
μSplit (Ashesh et al., ICCV 2023), both built on the ladder VAE of Sønderby et al. (NeurIPS 2016).

Latent maps z_1 … z_L live at 1/2, …, 1/2**L of the image size and are generated top-down.
Two bottom-up paths feed the top-down path: one over the widefield condition y (always
available; its features are merged into the top-down path at every level, as lateral context)
and one over the pair (x, y) (training only). At level l, with top-down state h_l:

* prior ``p(z_l | z_>l, y) = N(μ_p, σ_p²)`` from h_l;
* approximate posterior ``q(z_l | z_>l, x, y) = N(μ_q, σ_q²)`` from [h_l, bottom-up (x, y)
  features];
* ``h ← ResBlocks(h_l + W z_l)``, upsampled, merged with the y features of the next level.

The top state is the coarsest y features, so every prior depends on y. A head maps the
full-resolution state to the mean of x, as a residual on the first condition channel. In
training z is drawn from q and the KL divergences KL(q ‖ p) are returned; in inference z is
drawn from the priors, so each call gives one sample of p(x | y).

μSplit infers z from the input alone, so that the decoder learns everything about y through the
latents and pays for it in the KL term; on tiny simulated hazy/clean pairs that made training
ignore y (the posterior collapsed to the prior, output = input + a constant). Here
y reaches the decoder directly and the latents only carry what y leaves open, as in a
conditional VAE; the prior is therefore the sampler used at test time. μSplit's lateral
contextualisation (extra low-resolution context inputs) is left out.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hazematching.nets.layers import conv1, conv3, pad_to_multiple, res_blocks

#: Bounds on log σ of the latent Gaussians (σ from 4.5e-5 to 20): keeps exp() finite early on.
_LOG_SIGMA_RANGE = (-10.0, 3.0)


def _gaussian(params: Tensor) -> tuple[Tensor, Tensor]:
    """Split (B, 2z, h, w) into mean and clamped log σ, each (B, z, h, w)."""
    mean, log_sigma = params.chunk(2, dim=1)
    return mean, log_sigma.clamp(*_LOG_SIGMA_RANGE)


def gaussian_kl(q_mean: Tensor, q_log_sigma: Tensor, p_mean: Tensor, p_log_sigma: Tensor
                ) -> Tensor:
    """KL(N(q_mean, σ_q²) ‖ N(p_mean, σ_p²)) element-wise (nats), same shape as the inputs."""
    var_ratio = torch.exp(2 * (q_log_sigma - p_log_sigma))
    mean_term = ((q_mean - p_mean) * torch.exp(-p_log_sigma)) ** 2
    return p_log_sigma - q_log_sigma + 0.5 * (var_ratio + mean_term - 1)


class _BottomUp(nn.Module):
    """Stem + `n_levels` × (ResBlocks, stride-2 convolution): features at 1, 1/2, …, 1/2**L."""

    def __init__(self, in_ch: int, channels: int, n_levels: int, blocks: int):
        super().__init__()
        self.stem = conv3(in_ch, channels)
        self.levels = nn.ModuleList(
            nn.Sequential(res_blocks(channels, blocks, nn.GELU),
                          conv3(channels, channels, stride=2)) for _ in range(n_levels))

    def forward(self, x: Tensor) -> list[Tensor]:
        out = [self.stem(x)]
        for level in self.levels:
            out.append(level(out[-1]))
        return out


class LadderVAE(nn.Module):
    """Conditional ladder VAE ``y (B, in_channels, H, W) → x (B, out_channels, H, W)``.

    ``n_levels`` latent levels of ``z_channels`` channels, ``channels`` features throughout and
    ``blocks`` residual blocks per level and path. :meth:`sample` takes any H and W (padded
    internally to a multiple of 2**n_levels).
    """

    def __init__(self, in_channels: int, out_channels: int, *, channels: int = 64,
                 z_channels: int = 32, n_levels: int = 4, blocks: int = 1):
        super().__init__()
        if min(channels, z_channels, n_levels) < 1 or blocks < 0:
            raise ValueError(f"LadderVAE sizes must be positive, got channels={channels}, "
                             f"z_channels={z_channels}, n_levels={n_levels}, blocks={blocks}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.multiple = 2 ** n_levels
        self.cond_path = _BottomUp(in_channels, channels, n_levels, blocks)
        self.pair_path = _BottomUp(in_channels + out_channels, channels, n_levels, blocks)
        self.prior = nn.ModuleList(conv3(channels, 2 * z_channels) for _ in range(n_levels))
        self.posterior = nn.ModuleList(conv3(2 * channels, 2 * z_channels)
                                       for _ in range(n_levels))
        self.from_z = nn.ModuleList(conv1(z_channels, channels) for _ in range(n_levels))
        self.top_down = nn.ModuleList(res_blocks(channels, blocks, nn.GELU)
                                      for _ in range(n_levels))
        self.up = nn.ModuleList(nn.ConvTranspose2d(channels, channels, 2, stride=2)
                                for _ in range(n_levels))
        self.lateral = nn.ModuleList(conv1(2 * channels, channels) for _ in range(n_levels))
        self.head = nn.Sequential(res_blocks(channels, max(blocks, 1), nn.GELU),
                                  conv3(channels, out_channels))

    def _check(self, y: Tensor) -> None:
        if y.ndim != 4 or y.shape[1] != self.in_channels:
            raise ValueError(f"y must have shape (B, {self.in_channels}, H, W); got "
                             f"{tuple(y.shape)}")

    def _decode(self, y: Tensor, x: Tensor | None, generator: torch.Generator | None
                ) -> tuple[Tensor, Tensor]:
        """Run the top-down path; z from the posteriors given x, else from the priors.

        Returns the mean of x and the KL per image (B,) (zero without x).
        """
        cond = self.cond_path(y)
        pair = self.pair_path(torch.cat([x, y], dim=1)) if x is not None else None
        h = cond[-1]
        kl = torch.zeros(y.shape[0], device=y.device, dtype=torch.float32)
        for level in reversed(range(len(self.prior))):
            mean, log_sigma = _gaussian(self.prior[level](h))
            if pair is not None:
                p_mean, p_log_sigma = mean, log_sigma
                mean, log_sigma = _gaussian(self.posterior[level](
                    torch.cat([h, pair[level + 1]], dim=1)))
                kl = kl + gaussian_kl(mean.float(), log_sigma.float(), p_mean.float(),
                                      p_log_sigma.float()).sum(dim=(1, 2, 3))
            noise = torch.randn(mean.shape, generator=generator, device=mean.device,
                                dtype=mean.dtype)
            h = self.top_down[level](h + self.from_z[level](mean + torch.exp(log_sigma) * noise))
            h = self.lateral[level](torch.cat([self.up[level](h), cond[level]], dim=1))
        return self.head(h) + y[:, :1], kl

    def forward(self, y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass: z from the posteriors given the target.

        Args:
            y: (B, in_channels, H, W) conditions, H and W divisible by 2**n_levels.
            x: (B, out_channels, H, W) targets.

        Returns:
            The predicted mean of x (B, out_channels, H, W) and KL(q ‖ p) per image (B,),
            summed over all latent levels and elements (nats, float32).
        """
        self._check(y)
        return self._decode(y, x, None)

    def sample(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw of x per condition: z from the priors (noise from `generator`), decoded.

        y: (B, in_channels, H, W), any H, W → (B, out_channels, H, W), in y's units.
        """
        self._check(y)
        h, w = y.shape[-2:]
        return self._decode(pad_to_multiple(y, self.multiple), None, generator)[0][..., :h, :w]
