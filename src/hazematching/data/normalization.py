"""Per-channel intensity normalisation fitted on training data and stored with the model.

Two rules: z-score (mean/std over all training pixels of a channel, as in the paper) and
CSBDeep-style percentiles ((x − p_low) / (p_high − p_low)). The same statistics must be used at
prediction time, so they are part of the model directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class ChannelStats:
    """Affine map x_norm = (x − offset) / scale for one channel (intensity units)."""

    offset: float
    scale: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.offset) and np.isfinite(self.scale)) or self.scale <= 0:
            raise ValueError(f"invalid normalisation (offset={self.offset}, scale={self.scale}): "
                             f"the scale must be finite and > 0 — is the channel constant?")


@dataclass(frozen=True)
class Normalizer:
    """Statistics for the target channel and each conditioning (input) channel."""

    kind: Literal["meanstd", "percentile"]
    target: ChannelStats
    inputs: tuple[ChannelStats, ...]
    percentiles: tuple[float, float] = field(default=(0.1, 99.9))

    @classmethod
    def fit(cls, targets: list[np.ndarray], inputs: list[np.ndarray],
            kind: Literal["meanstd", "percentile"] = "meanstd",
            percentiles: tuple[float, float] = (0.1, 99.9)) -> Normalizer:
        """Fit on training images.

        Args:
            targets: one array per image, its planes as (N, Y, X), any dtype.
            inputs: one array per image, its planes as (N, C, Y, X), C = input channels.
            kind: 'meanstd' or 'percentile'.
            percentiles: (low, high) in percent, for 'percentile'.
        """
        n_ch = inputs[0].shape[1]
        t = _stats([np.asarray(a, np.float64).ravel() for a in targets], kind, percentiles)
        ins = tuple(_stats([np.asarray(a[:, c], np.float64).ravel() for a in inputs], kind,
                           percentiles) for c in range(n_ch))
        return cls(kind=kind, target=t, inputs=ins, percentiles=percentiles)

    def normalize_input(self, x: np.ndarray) -> np.ndarray:
        """(N, C, Y, X) raw input → float32 normalised."""
        if x.shape[1] != len(self.inputs):
            raise ValueError(f"the model expects {len(self.inputs)} input channel(s), the image "
                             f"has {x.shape[1]}")
        off = np.array([s.offset for s in self.inputs], np.float32)[None, :, None, None]
        sc = np.array([s.scale for s in self.inputs], np.float32)[None, :, None, None]
        return (x.astype(np.float32) - off) / sc

    def normalize_target(self, x: np.ndarray) -> np.ndarray:
        """Raw target (any shape) → float32 normalised."""
        return (x.astype(np.float32) - np.float32(self.target.offset)) / np.float32(
            self.target.scale)

    def denormalize_target(self, x: np.ndarray) -> np.ndarray:
        """Normalised prediction → raw target intensity units."""
        return x * np.float32(self.target.scale) + np.float32(self.target.offset)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "percentiles": list(self.percentiles),
            "target": {"offset": self.target.offset, "scale": self.target.scale},
            "inputs": [{"offset": s.offset, "scale": s.scale} for s in self.inputs],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(kind=d["kind"], target=ChannelStats(**d["target"]),
                   inputs=tuple(ChannelStats(**s) for s in d["inputs"]),
                   percentiles=tuple(d.get("percentiles", (0.1, 99.9))))


def _stats(chunks: list[np.ndarray], kind: str, percentiles: tuple[float, float]) -> ChannelStats:
    if kind == "meanstd":
        n = sum(c.size for c in chunks)
        mean = sum(float(c.sum()) for c in chunks) / n
        var = sum(float(((c - mean) ** 2).sum()) for c in chunks) / n
        return ChannelStats(offset=mean, scale=float(np.sqrt(var)))
    # Percentiles over a bounded random subsample: exact enough and keeps memory flat.
    rng = np.random.default_rng(0)
    pool = np.concatenate([c if c.size <= 2_000_000 else rng.choice(c, 2_000_000) for c in chunks])
    lo, hi = np.percentile(pool, percentiles)
    return ChannelStats(offset=float(lo), scale=float(hi - lo))
