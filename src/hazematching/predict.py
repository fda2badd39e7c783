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

from hazematching.config import SamplingConfig
from hazematching.data.tiling import TileGrid
from hazematching.methods.base import Method


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


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the network where asked (or 'auto' on a GPU), else a no-op."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Accumulator:
    """Running sums for one tile: Σx and Σx² over its samples (float64 for stable variance)."""

    __slots__ = ("s1", "s2", "n")

    def __init__(self, shape: tuple[int, int], device: torch.device):
        self.s1 = torch.zeros(shape, dtype=torch.float64, device=device)
        self.s2 = torch.zeros(shape, dtype=torch.float64, device=device)
        self.n = 0


def _batches(n_items: int, batch: int) -> Iterator[slice]:
    for start in range(0, n_items, batch):
        yield slice(start, min(start + batch, n_items))


@torch.inference_mode()
def predict_planes(method: Method, planes: np.ndarray, sampling: SamplingConfig, *,
                   n_samples: int | None = None, device: str | torch.device | None = None,
                   samples_out: np.ndarray | None = None, progress: bool = False
                   ) -> PlanePrediction:
    """Predict normalised planes tile by tile.

    Args:
        method: a trained method (its weights on any device; moved to `device`).
        planes: normalised conditions (N, C, Y, X) float32, any Y, X >= 1.
        sampling: tile size/overlap, batch size, seed, precision, solver settings.
        n_samples: posterior samples per pixel (stochastic methods; default sampling.n_samples).
            Deterministic methods always use one.
        device: 'auto', 'cpu', 'cuda', ….
        samples_out: optional writable array (N, S, Y, X) (e.g. a TIFF memmap) that receives
            each stitched posterior sample; it is zeroed here.
        progress: show a rich progress bar.

    Returns:
        :class:`PlanePrediction` with mean (N, Y, X) and std (N, Y, X) (sample std, ddof=1),
        both float32 in normalised units.
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
    T = grid.tile
    ph, pw = grid.padded
    wsum = np.zeros((ph, pw), np.float32)
    for y, x in grid.positions():
        wsum[y:y + T, x:x + T] += window
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
    gen = torch.Generator(device=dev)
    if sampling.seed is None:
        gen.seed()  # non-deterministic, and leaves the global RNG alone
    else:
        gen.manual_seed(sampling.seed)
    open_tiles: dict[int, _Accumulator] = {}

    def finish(ti: int) -> None:
        acc = open_tiles.pop(ti)
        n, y, x = tiles[ti]
        m = acc.s1 / acc.n
        mean[n, y:y + T, x:x + T] += window * m.float().cpu().numpy()
        if var is not None:
            v = ((acc.s2 - acc.n * m * m) / (acc.n - 1)).clamp_min(0)
            var[n, y:y + T, x:x + T] += window * v.float().cpu().numpy()

    bar = _progress(progress, len(item_tile), "sampling" if method.stochastic else "predicting")
    with bar as (prog, task):
        current_plane = 0
        for sl in _batches(len(item_tile), sampling.batch_size):
            ti_b = item_tile[sl]
            cond = np.stack([padded[tiles[i][0], :, tiles[i][1]:tiles[i][1] + T,
                                    tiles[i][2]:tiles[i][2] + T] for i in ti_b])
            cond_t = torch.from_numpy(cond).to(dev, non_blocking=True)
            with autocast_for(sampling.precision, dev):
                out = method.predict_batch(cond_t, gen)
            out = out[:, 0].double()
            for ti in np.unique(ti_b):
                rows = torch.from_numpy(np.nonzero(ti_b == ti)[0]).to(dev)
                acc = open_tiles.setdefault(int(ti), _Accumulator((T, T), dev))
                sel = out.index_select(0, rows)
                acc.s1 += sel.sum(0)
                acc.s2 += (sel * sel).sum(0)
                acc.n += len(rows)
            if sample_acc is not None:
                outs = out.float().cpu().numpy()
                for k, i in enumerate(ti_b):
                    n, y, x = tiles[i]
                    if n != current_plane:
                        _flush_samples(samples_out, sample_acc, wsum, current_plane, H, W)
                        current_plane = n
                    sample_acc[item_sample[sl][k], y:y + T, x:x + T] += window * outs[k]
            for ti in [t for t, a in open_tiles.items() if a.n == S]:
                finish(ti)
            prog.advance(task, len(ti_b))
    if sample_acc is not None:
        _flush_samples(samples_out, sample_acc, wsum, current_plane, H, W)
    mean = (mean / wsum)[:, :H, :W]
    std = None if var is None else np.sqrt(var / wsum)[:, :H, :W]
    return PlanePrediction(mean=np.ascontiguousarray(mean), std=None if std is None
                           else np.ascontiguousarray(std))


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
