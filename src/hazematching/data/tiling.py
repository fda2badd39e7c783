"""Overlapping tiles over an image of any size, and the window that blends them without seams."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


@dataclass(frozen=True)
class TileGrid:
    """Tiles of side `tile` over a plane padded from (height, width) to `padded`.

    The plane is padded (symmetrically) at the bottom/right to at least one tile and to a multiple
    of the network's divisor; tiles overlap by at least `overlap` pixels.
    """

    height: int
    width: int
    tile: int
    overlap: int
    padded: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def make(cls, height: int, width: int, tile: int, overlap: int, divisor: int = 1) -> TileGrid:
        if tile % divisor:
            raise ValueError(f"tile size {tile} must be a multiple of {divisor}")
        ph = max(tile, -(-height // divisor) * divisor)
        pw = max(tile, -(-width // divisor) * divisor)
        stride = tile - overlap
        return cls(height, width, tile, overlap, (ph, pw), tuple(_starts(ph, tile, stride)),
                   tuple(_starts(pw, tile, stride)))

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    def positions(self) -> list[tuple[int, int]]:
        """Top-left corners (y, x) of every tile, row-major."""
        return [(y, x) for y in self.ys for x in self.xs]

    def pad(self, planes: np.ndarray) -> np.ndarray:
        """Pad (..., height, width) to (..., *padded) by mirroring at the bottom/right edges."""
        ph, pw = self.padded
        widths = [(0, 0)] * (planes.ndim - 2) + [(0, ph - self.height), (0, pw - self.width)]
        return np.pad(planes, widths, mode="symmetric")

    def window(self) -> np.ndarray:
        """(tile, tile) float32 blending weights: 1 inside, a linear ramp across the overlap.

        The ramp never reaches 0, so pixels covered by a single tile (image borders) keep a
        positive weight; the stitched value is Σ w·tile / Σ w.
        """
        ramp = np.ones(self.tile, np.float32)
        if self.overlap:
            r = (np.arange(self.overlap, dtype=np.float32) + 1) / (self.overlap + 1)
            ramp[: self.overlap] = r
            ramp[-self.overlap:] = r[::-1]
        return np.outer(ramp, ramp)
