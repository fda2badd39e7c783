"""Tiled prediction of images of any size, shared by every method.

Work is a stream of (tile, sample) items cut into full network batches, so the network always
runs at the configured batch size however many samples or tiles there are. Per tile, the sum and
sum of squares of its samples are accumulated (float64) until its last sample arrives; then its
mean and std are blended into the output with a smooth window and the accumulators are freed.
Peak memory is therefore the outputs plus a few tiles, independent of the number of samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hazematching.config import SamplingConfig
from hazematching.data.tiling import TileGrid
from hazematching.methods.base import Method
from hazematching.noise_field import NoiseField


@dataclass
class PlanePrediction:
    """Normalised predictions for planes (N, Y, X); `std` is None for deterministic methods."""

    mean: np.ndarray
    std: np.ndarray | None


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto'/None → CUDA if available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_batch_size(device: torch.device) -> int:
    """(tile, sample) pairs per network call when the config leaves it open: a GPU needs
    large batches to be busy; on a CPU eight 256-px tiles already keep every core busy, and
    more only add memory."""
    return 64 if device.type == "cuda" else 8


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the network where asked (or 'auto' on a GPU), else a no-op."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TileMoments:
    """Running sums for one tile over its samples (float64 for a stable variance): Σx, Σx²
    and, for methods that give one, Σ of the one-call mean estimates. Shared with the BMZ
    wrapper network (:mod:`hazematching.bmz.network`), so both form mean and std alike."""

    __slots__ = ("n", "s0", "s1", "s2")

    def __init__(self, shape: tuple[int, int], device: torch.device, with_estimate: bool):
        self.s1 = torch.zeros(shape, dtype=torch.float64, device=device)
        self.s2 = torch.zeros(shape, dtype=torch.float64, device=device)
        self.s0 = torch.zeros(shape, dtype=torch.float64, device=device) if with_estimate \
            else None
        self.n = 0

    def add(self, samples: Tensor, estimates: Tensor | None) -> None:
        """Add (k, h, w) float64 samples (and their (k, h, w) mean estimates)."""
        self.s1 += samples.sum(0)
        self.s2 += (samples * samples).sum(0)
        if self.s0 is not None and estimates is not None:
            self.s0 += estimates.sum(0)
        self.n += samples.shape[0]

    def mean_var(self, mean_from: str, spread_about: str) -> tuple[Tensor, Tensor | None]:
        """The tile's mean and variance (None for one sample).

        `mean_from` / `spread_about` are 'samples' or 't0' (see ``SamplingConfig.mmse`` and
        ``.std``). About the samples' own mean the variance is unbiased (ddof = 1); about the
        mean m of the one-call estimates it is Σ(x − m)²/n (m is not fitted to the samples, so
        no degree of freedom is lost).
        """
        n = self.n
        sample_mean = self.s1 / n
        t0_mean = self.s0 / n if self.s0 is not None else sample_mean
        mean = t0_mean if mean_from == "t0" else sample_mean
        if n < 2:
            return mean, None
        if spread_about == "t0" and self.s0 is not None:
            var = (self.s2 - 2 * t0_mean * self.s1 + n * t0_mean * t0_mean) / n
        else:
            var = (self.s2 - n * sample_mean * sample_mean) / (n - 1)
        return mean, var.clamp_min(0)


def _batches(n_items: int, batch: int) -> Iterator[slice]:
    for start in range(0, n_items, batch):
        yield slice(start, min(start + batch, n_items))


@contextlib.contextmanager
def _channels_last(method: Method) -> Iterator[None]:
    """Run the method's networks in channels-last layout (oneDNN's and cuDNN's fast
    convolutions) and give the parameters back in their own layout afterwards, so that saved
    weights stay contiguous."""
    method.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        method.to(memory_format=torch.contiguous_format)


@torch.inference_mode()
def predict_planes(method: Method, planes: np.ndarray, sampling: SamplingConfig, *,
                   n_samples: int | None = None, device: str | torch.device | None = None,
                   samples_out: np.ndarray | None = None, progress: bool = False
                   ) -> PlanePrediction:
    """Predict normalised planes tile by tile.

    Args:
        method: a trained method (its weights on any device; moved to `device`).
        planes: normalised conditions (N, C, Y, X) float32, any Y, X >= 1.
        sampling: tile size/overlap, batch size, seed, precision, solver settings, and how the
            MMSE is formed (``sampling.mmse``).
        n_samples: posterior samples per pixel (stochastic methods; default sampling.n_samples).
            Deterministic methods always use one.
        device: 'auto', 'cpu', 'cuda', ….
        samples_out: optional writable array (N, S, Y, X) (e.g. a TIFF memmap) that receives
            each stitched posterior sample; it is zeroed here.
        progress: show a rich progress bar.

    Returns:
        :class:`PlanePrediction` with mean (N, Y, X) and std (N, Y, X), both float32 in
        normalised units; std is None for deterministic methods and for a single sample.

    Methods with ``takes_noise`` start every sample of a plane from one noise field over the
    whole plane (:class:`~hazematching.noise_field.NoiseField`), cut into the tiles, so that a
    stitched sample is one coherent sample and the same seed gives the same field whatever the
    tiling or batching.
    """
    if planes.ndim != 4:
        raise ValueError(f"planes must be (N, C, Y, X), got shape {planes.shape}")
    dev = resolve_device(device)
    method = method.to(dev).eval()
    S = (n_samples or sampling.n_samples) if method.stochastic else 1
    N, C, H, W = planes.shape
    grid = TileGrid.make(H, W, sampling.tile_size, sampling.tile_overlap,
                         method.config.network.divisor)
    padded = grid.pad(planes.astype(np.float32, copy=False))
    window = grid.window()
    th, tw = grid.tile_h, grid.tile_w
    ph, pw = grid.padded
    wsum = np.zeros((ph, pw), np.float32)
    for y, x in grid.positions():
        wsum[y:y + th, x:x + tw] += window
    mean = np.zeros((N, ph, pw), np.float32)
    var = np.zeros((N, ph, pw), np.float32) if S > 1 else None
    sample_acc = None
    if samples_out is not None:
        if samples_out.shape != (N, S, H, W):
            raise ValueError(f"samples_out must have shape {(N, S, H, W)}, got "
                             f"{samples_out.shape}")
        sample_acc = np.zeros((S, ph, pw), np.float32)

    tiles = [(n, y, x) for n in range(N) for (y, x) in grid.positions()]
    item_tile = np.repeat(np.arange(len(tiles)), S)
    item_sample = np.tile(np.arange(S), len(tiles))
    coherent = method.stochastic and method.takes_noise
    use_estimate = coherent and "t0" in (sampling.mmse, sampling.std)
    field = NoiseField(sampling.seed) if coherent else None
    gen = torch.Generator(device=dev)
    if sampling.seed is None:
        gen.seed()  # non-deterministic, and leaves the global RNG alone
    else:
        gen.manual_seed(sampling.seed)
    open_tiles: dict[int, TileMoments] = {}

    def finish(ti: int) -> None:
        acc = open_tiles.pop(ti)
        n, y, x = tiles[ti]
        m, v = acc.mean_var(sampling.mmse, sampling.std)
        mean[n, y:y + th, x:x + tw] += window * m.float().cpu().numpy()
        if var is not None and v is not None:
            var[n, y:y + th, x:x + tw] += window * v.float().cpu().numpy()

    bar = _progress(progress, len(item_tile), "sampling" if method.stochastic else "predicting")
    with bar as (prog, task), _channels_last(method):
        current_plane = 0
        for sl in _batches(len(item_tile), sampling.batch_size or default_batch_size(dev)):
            ti_b = item_tile[sl]
            cond = np.stack([padded[tiles[i][0], :, tiles[i][1]:tiles[i][1] + th,
                                    tiles[i][2]:tiles[i][2] + tw] for i in ti_b])
            cond_t = torch.from_numpy(cond).to(dev, non_blocking=True)
            cond_t = cond_t.contiguous(memory_format=torch.channels_last)
            estimate = None
            with autocast_for(sampling.precision, dev):
                if coherent:
                    noise = np.stack([noise_tile(field, tiles[i], int(k), th, tw,
                                                  sampling.antithetic)
                                      for i, k in zip(ti_b, item_sample[sl])])[:, None]
                    out, estimate = method.posterior_batch(
                        cond_t, torch.from_numpy(noise).to(dev, non_blocking=True), sampling)
                else:
                    out = method.predict_batch(cond_t, gen)
            out = out[:, 0].double()
            estimate = None if estimate is None else estimate[:, 0].double()
            for ti in np.unique(ti_b):
                rows = torch.from_numpy(np.nonzero(ti_b == ti)[0]).to(dev)
                acc = open_tiles.setdefault(int(ti), TileMoments((th, tw), dev, use_estimate))
                acc.add(out.index_select(0, rows),
                        None if estimate is None else estimate.index_select(0, rows))
            if sample_acc is not None:
                outs = out.float().cpu().numpy()
                for k, i in enumerate(ti_b):
                    n, y, x = tiles[i]
                    if n != current_plane:
                        _flush_samples(samples_out, sample_acc, wsum, current_plane, H, W)
                        current_plane = n
                    sample_acc[item_sample[sl][k], y:y + th, x:x + tw] += window * outs[k]
            for ti in [t for t, a in open_tiles.items() if a.n == S]:
                finish(ti)
            prog.advance(task, len(ti_b))
    if sample_acc is not None:
        _flush_samples(samples_out, sample_acc, wsum, current_plane, H, W)
    mean = (mean / wsum)[:, :H, :W]
    if var is not None:
        # Over the padded plane, so that the image border is smoothed with mirrored values.
        var = smooth_variance(torch.from_numpy(var / wsum), sampling.std_smoothing).numpy()
    std = None if var is None else np.sqrt(var)[:, :H, :W]
    return PlanePrediction(mean=np.ascontiguousarray(mean), std=None if std is None
                           else np.ascontiguousarray(std))


def smooth_variance(var: Tensor, sigma: float) -> Tensor:
    """Gaussian-smooth variance maps (..., Y, X) with std `sigma` px (0: unchanged).

    A variance from a few samples is noisy pixel by pixel (its relative error is about
    √(2/K)); the posterior variance itself changes over a few pixels at most, so averaging it
    over neighbours gives the std more effective samples. Separable, mirrored at the borders.
    Written here rather than taken from scipy so that the BMZ wrapper, which may only use
    torch, smooths exactly alike.
    """
    if sigma <= 0:
        return var
    r = int(np.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=var.dtype) / sigma) ** 2)
    k = (k / k.sum()).to(var.device)
    shape = var.shape
    x = var.reshape(-1, 1, *shape[-2:])
    mode = "reflect" if min(shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return x.reshape(shape)


def noise_tile(field: NoiseField, tile: tuple[int, int, int], sample: int, th: int, tw: int,
                antithetic: bool) -> np.ndarray:
    """Sample `sample`'s (th, tw) noise on the tile at (plane, y, x); antithetic pairs share a
    field with opposite signs (samples 2j and 2j + 1 use ±field j)."""
    n, y, x = tile
    if not antithetic:
        return field.tile(n, sample, y, x, th, tw)
    noise = field.tile(n, sample // 2, y, x, th, tw)
    return -noise if sample % 2 else noise


def _flush_samples(out: np.ndarray, acc: np.ndarray, wsum: np.ndarray, plane: int, H: int,
                   W: int) -> None:
    out[plane] = (acc / wsum)[:, :H, :W]
    acc[:] = 0


@contextlib.contextmanager
def _progress(enabled: bool, total: int, label: str):
    """A rich progress bar over `total` items, or a silent stand-in."""
    if not enabled:
        class _Null:
            def advance(self, *_: object) -> None:
                pass

        yield _Null(), None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as prog:
        yield prog, prog.add_task(label, total=total)
