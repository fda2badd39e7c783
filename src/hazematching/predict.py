"""Tiled prediction of images of any size, shared by every method.

Work is a stream of (tile, sample) items cut into full network batches, so the network always
runs at the configured batch size however many samples or tiles there are. Per tile, the sum and
sum of squares of its samples are accumulated (float64) until its last sample arrives; then its
mean and std are blended into the output with a smooth window and the accumulators are freed.
Peak memory is therefore a few bands of tile rows, independent of the number of samples and of
the image size: the input is read and the outputs are written a band at a time (from and to
numpy arrays, zarr arrays or files: :mod:`hazematching.blocks`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hazematching.config import SamplingConfig
from hazematching.data.tiling import TileGrid
from hazematching.methods.base import Method
from hazematching.noise_field import NoiseField

#: ``progress_callback(done, total)`` of the prediction functions: work units (one sample of one
#: tile each) done so far, of the total; an exception it raises stops the prediction.
ProgressCallback = Callable[[int, int], None]
#: A numpy array or anything indexed like one by blocks (a zarr array, a view of a file).
ArrayLike = Any


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


#: Tile pixels per network call on a CPU when the config leaves the batch open. Larger calls
#: are slower per pixel, not faster: their activations (tens of MB each) are above glibc's mmap
#: threshold, so every call maps fresh pages and faults them in (measured on a 2-core Xeon,
#: half-width U-Net, one thread: 240-px tiles 2.24 µs/px at batch 8 with 5.8 M page faults,
#: 1.44 µs/px at batch 1; 128-px tiles 1.29 µs/px at batch 4). 2**16 px is one 256-px tile.
CPU_BATCH_PIXELS = 2**16


def default_batch_size(device: torch.device, tile_pixels: int = 256 * 256) -> int:
    """(tile, sample) pairs per network call when the config leaves it open: 64 on a GPU,
    which needs large batches to be busy; on a CPU as many tiles as fit in
    :data:`CPU_BATCH_PIXELS` (at least one), where one 256-px tile keeps every core busy and
    bigger calls cost more per pixel.

    Args:
        device: where the network runs.
        tile_pixels: pixels of one tile (height × width).
    """
    if device.type == "cuda":
        return 64
    return max(1, CPU_BATCH_PIXELS // max(1, int(tile_pixels)))


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
def predict_planes(method: Method, planes: ArrayLike, sampling: SamplingConfig, *,
                   n_samples: int | None = None, device: str | torch.device | None = None,
                   samples_out: ArrayLike | None = None, progress: bool = False,
                   progress_callback: ProgressCallback | None = None,
                   mean_out: ArrayLike | None = None, std_out: ArrayLike | None = None,
                   plane_indices: Sequence[int] | None = None) -> PlanePrediction:
    """Predict normalised planes tile by tile, streaming from `planes` into the outputs.

    Args:
        method: a trained method (its weights on any device; moved to `device`).
        planes: normalised conditions (N, C, Y, X) float32, any Y, X >= 1: a numpy array or
            anything with ``.shape`` whose ``planes[n:n + 1, :, y0:y1]`` gives a numpy block
            (a zarr array, an :class:`~hazematching.blocks.AxesView` of a file). It is read
            one band of tile rows at a time.
        sampling: tile size/overlap, batch size, seed, precision, solver settings, and how the
            MMSE is formed (``sampling.mmse``).
        n_samples: posterior samples per pixel (stochastic methods; default sampling.n_samples).
            Deterministic methods always use one.
        device: 'auto', 'cpu', 'cuda', ….
        samples_out: optional writable array (N, S, Y, X) (e.g. a view of a file) that receives
            each stitched posterior sample.
        progress: show a rich progress bar.
        progress_callback: called as ``progress_callback(done, total)`` in work units, one unit
            being one sample of one tile: first with ``done = 0`` before any work, then after
            each network batch (``done`` increasing up to ``total`` = planes × tiles per plane
            × samples). An exception it raises stops the prediction at once and propagates
            (e.g. to cancel it); the outputs are then partly written.
        mean_out, std_out: optional writable arrays (N, Y, X) for the mean and std (std only
            with two samples or more); default new numpy arrays.
        plane_indices: predict only these planes (indices into N, in increasing order),
            leaving the outputs' other planes unwritten: a process's share of a stack split
            over processes. Each plane's values are those of predicting all N, to the bit:
            its noise is keyed by its index in N, and the network sees the very batches of
            that prediction (those holding tiles of other planes too, at a share's ends, are
            run whole and the other planes' results dropped), as a network's results can
            depend on what else is in its batch in their last bits.

    Returns:
        :class:`PlanePrediction` with mean (N, Y, X) and std (N, Y, X), both float32 in
        normalised units (`mean_out`/`std_out` when given); std is None for deterministic
        methods and for a single sample.

    The outputs are written row by row as they become final: once a row of tiles is done, the
    rows above the next row of tiles are normalised by the blending weights and written, in
    blocks that start and end on the outputs' chunk rows (``.chunks``, e.g. of a zarr array),
    so that every chunk is written once, by one writer. Memory thus holds a few bands of rows,
    whatever the image size; the values are the same as if the whole plane were stitched at
    once, to the bit.

    Methods with ``takes_noise`` start every sample of a plane from one noise field over the
    whole plane (:class:`~hazematching.noise_field.NoiseField`), cut into the tiles, so that a
    stitched sample is one coherent sample and the same seed gives the same field whatever the
    tiling or batching.
    """
    if len(getattr(planes, "shape", ())) != 4:
        raise ValueError(f"planes must be (N, C, Y, X), got shape "
                         f"{tuple(getattr(planes, 'shape', ()))}")
    dev = resolve_device(device)
    method = method.to(dev).eval()
    S = (n_samples or sampling.n_samples) if method.stochastic else 1
    N, C, H, W = (int(n) for n in planes.shape)
    grid = TileGrid.make(H, W, sampling.tile_size, sampling.tile_overlap,
                         method.config.network.divisor)
    th, tw = grid.tile_h, grid.tile_w
    if mean_out is None:
        mean_out = np.zeros((N, H, W), np.float32)
    if S > 1 and std_out is None:
        std_out = np.zeros((N, H, W), np.float32)
    for name, out, shape in (("mean_out", mean_out, (N, H, W)),
                             ("std_out", std_out if S > 1 else None, (N, H, W)),
                             ("samples_out", samples_out, (N, S, H, W))):
        if out is not None and tuple(out.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(out.shape)}")
    stitch = _Stitcher(grid, S, sampling.std_smoothing, mean_out, std_out if S > 1 else None,
                       samples_out)
    source = _TileSource(planes, grid)

    todo = range(N) if plane_indices is None else [int(n) for n in plane_indices]
    if any(not 0 <= n < N for n in todo) or list(todo) != sorted(set(todo)):
        raise ValueError(f"plane_indices must increase within 0 … {N - 1}, got {list(todo)}")
    tiles = [(n, y, x) for n in range(N) for (y, x) in grid.positions()]
    item_tile = np.repeat(np.arange(len(tiles)), S)
    item_sample = np.tile(np.arange(S), len(tiles))
    owned = np.isin(np.array([n for n, _, _ in tiles]), todo)[item_tile]
    batch = sampling.batch_size or default_batch_size(dev, th * tw)
    batches = [sl for sl in _batches(len(item_tile), batch) if owned[sl].any()]
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
        m, v = open_tiles.pop(ti).mean_var(sampling.mmse, sampling.std)
        stitch.add_moments(tiles[ti], m.float().cpu().numpy(),
                           None if v is None else v.float().cpu().numpy())

    total, done = int(owned.sum()), 0
    if progress_callback is not None:
        progress_callback(0, total)
    bar = _progress(progress, total, "sampling" if method.stochastic else "predicting")
    with bar as (prog, task), _channels_last(method):
        for sl in batches:
            ti_b = item_tile[sl]
            source.keep({tiles[i][:2] for i in ti_b})
            cond = np.stack([source.tile(*tiles[i]) for i in ti_b])
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
            for ti in np.unique(ti_b[owned[sl]]):
                rows = torch.from_numpy(np.nonzero(ti_b == ti)[0]).to(dev)
                acc = open_tiles.setdefault(int(ti), TileMoments((th, tw), dev, use_estimate))
                acc.add(out.index_select(0, rows),
                        None if estimate is None else estimate.index_select(0, rows))
            if samples_out is not None:
                outs = out.float().cpu().numpy()
                for k in np.nonzero(owned[sl])[0]:
                    stitch.add_sample(tiles[ti_b[k]], int(item_sample[sl][k]), outs[k])
            for ti in [t for t, a in open_tiles.items() if a.n == S]:
                finish(ti)
            prog.advance(task, int(owned[sl].sum()))
            done += int(owned[sl].sum())
            if progress_callback is not None:
                progress_callback(done, total)
    return PlanePrediction(mean=mean_out, std=std_out if S > 1 else None)


class _TileSource:
    """Tiles of the padded planes, cut from bands of tile rows read from `planes` (each band
    once, mirrored at the bottom/right as :meth:`TileGrid.pad` pads)."""

    def __init__(self, planes: ArrayLike, grid: TileGrid):
        self.planes, self.grid = planes, grid
        self.bands: dict[tuple[int, int], np.ndarray] = {}
        self.cols = _symmetric(np.arange(grid.padded[1]), grid.width)

    def keep(self, keys: set[tuple[int, int]]) -> None:
        """Forget the bands no tile of `keys` (plane, y) needs."""
        for key in [k for k in self.bands if k not in keys]:
            del self.bands[key]

    def tile(self, n: int, y: int, x: int) -> np.ndarray:
        band = self.bands.get((n, y))
        if band is None:
            rows = _symmetric(np.arange(y, y + self.grid.tile_h), self.grid.height)
            lo, hi = int(rows.min()), int(rows.max()) + 1
            block = np.asarray(self.planes[n:n + 1, :, lo:hi])[0].astype(np.float32, copy=False)
            band = self.bands[(n, y)] = block[:, rows - lo][:, :, self.cols]
        return band[:, :, x:x + self.grid.tile_w]


def _symmetric(index: np.ndarray, n: int) -> np.ndarray:
    """Indices into a length-`n` axis of an axis extended by mirroring (numpy's 'symmetric'
    padding: ``n`` → ``n - 1``, ``n + 1`` → ``n - 2``, …, repeated with period 2n)."""
    m = index % (2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


class _Band:
    """The unfinished rows [start, start + rows) of one padded plane: sums of window-weighted
    tile means, variances and samples."""

    def __init__(self, width: int, n_samples: int, var: bool, samples: bool):
        self.start, self.rows, self.width = 0, 0, width
        self.mean = np.zeros((0, width), np.float32)
        self.var = np.zeros((0, width), np.float32) if var else None
        self.samples = np.zeros((n_samples, 0, width), np.float32) if samples else None

    def ensure(self, stop: int) -> None:
        """Cover the rows up to `stop` (zeros for new ones)."""
        more = stop - self.start - self.rows
        if more <= 0:
            return
        self.mean = np.concatenate([self.mean, np.zeros((more, self.width), np.float32)])
        if self.var is not None:
            self.var = np.concatenate([self.var, np.zeros((more, self.width), np.float32)])
        if self.samples is not None:
            s = self.samples
            self.samples = np.concatenate([s, np.zeros((s.shape[0], more, self.width),
                                                       np.float32)], axis=1)
        self.rows += more

    def pop(self, stop: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Take the rows before `stop` out of the band."""
        k = stop - self.start
        out = (self.mean[:k], None if self.var is None else self.var[:k],
               None if self.samples is None else self.samples[:, :k])
        self.mean = self.mean[k:].copy()
        self.var = None if self.var is None else self.var[k:].copy()
        self.samples = None if self.samples is None else self.samples[:, k:].copy()
        self.start, self.rows = stop, self.rows - k
        return out


class _Stitcher:
    """Blends finished tiles into bands of rows per plane and writes every row once no later
    tile can touch it: after the last tile of a tile row, the rows above the next tile row."""

    def __init__(self, grid: TileGrid, n_samples: int, sigma: float, mean_out: ArrayLike,
                 std_out: ArrayLike | None, samples_out: ArrayLike | None):
        self.grid, self.n_samples, self.sigma = grid, n_samples, sigma
        self.window = grid.window()
        self.next_row = dict(zip(grid.ys, (*grid.ys[1:], grid.padded[0]), strict=True))
        self.bands: dict[int, _Band] = {}
        self.smoothers: dict[int, _VarianceRows] = {}
        self.mean = _RowWriter(mean_out, grid.height)
        self.std = None if std_out is None else _RowWriter(std_out, grid.height)
        self.samples = None if samples_out is None else _RowWriter(samples_out, grid.height)

    def _band(self, n: int, y: int) -> _Band:
        band = self.bands.get(n)
        if band is None:
            band = self.bands[n] = _Band(self.grid.padded[1], self.n_samples,
                                         self.std is not None, self.samples is not None)
        band.ensure(y + self.grid.tile_h)
        return band

    def add_sample(self, tile: tuple[int, int, int], sample: int, values: np.ndarray) -> None:
        n, y, x = tile
        band = self._band(n, y)
        r = y - band.start
        band.samples[sample, r:r + self.grid.tile_h, x:x + self.grid.tile_w] += \
            self.window * values

    def add_moments(self, tile: tuple[int, int, int], mean: np.ndarray,
                    var: np.ndarray | None) -> None:
        """Blend a finished tile's mean (and variance) in; tiles come in row-major order."""
        n, y, x = tile
        band = self._band(n, y)
        r, th, tw = y - band.start, self.grid.tile_h, self.grid.tile_w
        band.mean[r:r + th, x:x + tw] += self.window * mean
        if band.var is not None and var is not None:
            band.var[r:r + th, x:x + tw] += self.window * var
        if x == self.grid.xs[-1]:
            self._flush(n, self.next_row[y])

    def _weights(self, start: int, stop: int) -> np.ndarray:
        """Σ of the tile windows over padded rows [start, stop), added in tile order (as over
        the whole plane, so the sums are the same to the bit)."""
        g = self.grid
        w = np.zeros((stop - start, g.padded[1]), np.float32)
        for y, x in g.positions():
            lo, hi = max(y, start), min(y + g.tile_h, stop)
            if lo < hi:
                w[lo - start:hi - start, x:x + g.tile_w] += self.window[lo - y:hi - y]
        return w

    def _flush(self, n: int, stop: int) -> None:
        g = self.grid
        band = self.bands[n]
        start = band.start
        last = stop == g.padded[0]
        wsum = self._weights(start, stop)
        mean, var, samples = band.pop(stop)
        H, W = g.height, g.width
        if start < H:
            h = min(stop, H) - start
            self.mean.write(n, start, (mean / wsum)[:h, :W])
            if samples is not None:
                self.samples.write(n, start, (samples / wsum)[:, :h, :W])
        if var is not None:
            if self.sigma > 0:
                rows = self.smoothers.setdefault(n, _VarianceRows(g.padded, self.sigma))
                start, var = rows.push(var / wsum, last)
            else:
                var = var / wsum
            if start < H and len(var):
                h = min(start + len(var), H) - start
                self.std.write(n, start, np.sqrt(var)[:h, :W])
        if last:
            del self.bands[n]
            self.smoothers.pop(n, None)


class _VarianceRows:
    """Gaussian smoothing (:func:`smooth_variance`) of a plane's variance arriving in bands
    of rows: a row is smoothed once the rows within 3σ below it have arrived, from those rows
    and the ones above, so each row gets exactly the values smoothing the whole plane gives."""

    def __init__(self, padded: tuple[int, int], sigma: float):
        self.height, self.sigma = padded[0], sigma
        self.radius = int(np.ceil(3 * sigma))
        self.mode = "reflect" if min(padded) > self.radius else "replicate"
        self.first, self.done = 0, 0
        self.rows = np.zeros((0, padded[1]), np.float32)

    def push(self, rows: np.ndarray, last: bool) -> tuple[int, np.ndarray]:
        """Add the next normalised variance rows; return (first row, smoothed rows) ready."""
        r = self.radius
        self.rows = np.concatenate([self.rows, rows])
        top = self.first + len(self.rows)
        stop = self.height if last else max(self.done, top - r)
        if stop == self.done:  # no row has all its neighbours yet
            return self.done, self.rows[:0]
        lo = max(0, self.done - r)
        part = torch.from_numpy(self.rows[lo - self.first:min(top, stop + r) - self.first])
        out = smooth_variance(part, self.sigma, mode=self.mode).numpy()
        start, self.done = self.done, stop
        drop = max(0, stop - r) - self.first
        self.rows, self.first = self.rows[drop:], self.first + drop
        return start, out[start - lo:stop - lo]


class _RowWriter:
    """Writes the rows of an output (…, H, W) in blocks aligned to its chunk rows: rows are
    held until a chunk row is complete (or the plane ends), so each chunk is written once."""

    def __init__(self, out: ArrayLike, height: int):
        self.out, self.height = out, height
        chunks = getattr(out, "chunks", None)
        self.align = int(chunks[-2]) if chunks else 1
        self.pending: dict[int, tuple[int, list[np.ndarray]]] = {}

    def write(self, n: int, start: int, block: np.ndarray) -> None:
        """Rows [start, start + block.shape[-2]) of plane `n`; rows come in order."""
        first, blocks = self.pending.get(n, (start, []))
        blocks.append(block)
        stop = start + block.shape[-2]
        end = stop if stop == self.height else stop // self.align * self.align
        if end <= first:
            self.pending[n] = (first, blocks)
            return
        rows = np.concatenate(blocks, axis=-2) if len(blocks) > 1 else block
        self.out[(n, Ellipsis, slice(first, end), slice(None))] = rows[..., :end - first, :]
        if end < stop:
            self.pending[n] = (end, [rows[..., end - first:, :]])
        else:
            self.pending.pop(n, None)


def smooth_variance(var: Tensor, sigma: float, mode: str | None = None) -> Tensor:
    """Gaussian-smooth variance maps (..., Y, X) with std `sigma` px (0: unchanged).

    A variance from a few samples is noisy pixel by pixel (its relative error is about
    √(2/K)); the posterior variance itself changes over a few pixels at most, so averaging it
    over neighbours gives the std more effective samples. Separable, mirrored at the borders
    ('reflect'; 'replicate' where a side is not longer than 3σ, or as `mode` says). Each pass
    is a sum of shifted copies in a fixed order, so a pixel's value depends only on its
    neighbours, not on the size of the array it is part of: bands of rows smoothed apart give
    the same bits as the whole plane. Written here rather than taken from scipy so that the
    BMZ wrapper, which may only use torch, smooths exactly alike.
    """
    if sigma <= 0:
        return var
    r = int(np.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=var.dtype) / sigma) ** 2)
    k = (k / k.sum()).to(var.device)
    shape = var.shape
    mode = mode or ("reflect" if min(shape[-2:]) > r else "replicate")
    x = var.reshape(-1, 1, *shape[-2:])
    h, w = shape[-2:]
    xp = F.pad(x, (r, r, 0, 0), mode=mode)
    x = k[0] * xp[..., 0:w]
    for j in range(1, 2 * r + 1):
        x = x + k[j] * xp[..., j:j + w]
    xp = F.pad(x, (0, 0, r, r), mode=mode)
    x = k[0] * xp[..., 0:h, :]
    for j in range(1, 2 * r + 1):
        x = x + k[j] * xp[..., j:j + h, :]
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
