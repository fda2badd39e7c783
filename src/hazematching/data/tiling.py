"""Overlapping tiles over an image of any size, and the window that blends them without seams."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _ceil_to(n: int, divisor: int) -> int:
    return -(-n // divisor) * divisor


def _axis(length: int, tile: int, overlap: int, divisor: int) -> tuple[int, tuple[int, ...]]:
    """(tile side, starts) along one padded axis of `length` (a multiple of `divisor`).

    Uses the fewest tiles of at most `tile` px that overlap by at least `overlap`, then shrinks
    the side to what those tiles need and spreads them evenly: a 1024-px axis with 256-px tiles
    and a 32-px overlap gets 5 tiles of 240 px instead of 5 of 256 with one overlap of 224.
    """
    if length <= tile:
        return length, (0,)
    n = -(-(length - overlap) // (tile - overlap))
    side = min(tile, _ceil_to(-(-(length + (n - 1) * overlap) // n), divisor))
    span = length - side
    return side, tuple(round(i * span / (n - 1)) for i in range(n))


@dataclass(frozen=True)
class TileGrid:
    """Tiles of (tile_h, tile_w) px over a plane padded from (height, width) to `padded`.

    The plane is padded (mirrored) at the bottom/right to a multiple of the network's divisor;
    tiles are at most `tile` px per side (smaller planes get one tile of their own size) and
    overlap by at least `overlap` pixels.
    """

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    padded: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def make(cls, height: int, width: int, tile: int, overlap: int, divisor: int = 1) -> TileGrid:
        if tile % divisor:
            raise ValueError(f"tile size {tile} must be a multiple of {divisor}")
        if not 0 <= 2 * overlap <= tile:
            raise ValueError(f"tile overlap {overlap} must be between 0 and half the tile size "
                             f"{tile}")
        ph, pw = _ceil_to(height, divisor), _ceil_to(width, divisor)
        th, ys = _axis(ph, tile, overlap, divisor)
        tw, xs = _axis(pw, tile, overlap, divisor)
        return cls(height, width, th, tw, overlap, (ph, pw), ys, xs)

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def tile_pixels(self) -> int:
        """Pixels the network processes per plane, overlaps counted as often as computed."""
        return self.n_tiles * self.tile_h * self.tile_w

    def positions(self) -> list[tuple[int, int]]:
        """Top-left corners (y, x) of every tile, row-major."""
        return [(y, x) for y in self.ys for x in self.xs]

    def pad(self, planes: np.ndarray) -> np.ndarray:
        """Pad (..., height, width) to (..., *padded) by mirroring at the bottom/right edges."""
        ph, pw = self.padded
        widths = [(0, 0)] * (planes.ndim - 2) + [(0, ph - self.height), (0, pw - self.width)]
        return np.pad(planes, widths, mode="symmetric")

    def window(self) -> np.ndarray:
        """(tile_h, tile_w) float32 blending weights: 1 inside, a linear ramp across the overlap.

        The ramp never reaches 0, so pixels covered by a single tile (image borders) keep a
        positive weight; the stitched value is Σ w·tile / Σ w.
        """
        return np.outer(self._ramp(self.tile_h), self._ramp(self.tile_w))

    def _ramp(self, n: int) -> np.ndarray:
        ramp = np.ones(n, np.float32)
        o = min(self.overlap, n // 2)
        if o:
            r = (np.arange(o, dtype=np.float32) + 1) / (o + 1)
            ramp[:o] = r
            ramp[-o:] = r[::-1]
        return ramp
