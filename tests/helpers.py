"""Test data builders shared by several test modules (importable as `helpers`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hazematching.data.pairs import PairedImages
from hazematching.io import write_tiff


def make_pairs(n: int, size: int = 48, seed: int = 0) -> PairedImages:
    """Blobs (target) and a hazy, noisy, offset version (input), raw uint16-like ranges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    targets, inputs = [], []
    for _ in range(n):
        t = np.zeros((size, size), np.float32)
        for _ in range(6):
            cy, cx = rng.uniform(0, size, 2)
            t += 800 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)
        haze = 300 + 0.5 * t.mean() + 0.3 * t
        x = haze + rng.normal(0, 10, t.shape)
        targets.append(t[None] + 100)
        inputs.append(x[None, None].astype(np.float32))
    return PairedImages([f"img{i}" for i in range(n)], targets, inputs)


def write_paper_layout(folder: Path, pairs: PairedImages) -> Path:
    """One CYX uint16 TIFF per sample: channel 0 target, channel 1 input."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, t, x in zip(pairs.names, pairs.targets, pairs.inputs, strict=True):
        cyx = np.stack([t[0], x[0, 0]]).clip(0, 65535).astype(np.uint16)
        write_tiff(folder / f"{name}.tif", cyx, "CYX")
    return folder
