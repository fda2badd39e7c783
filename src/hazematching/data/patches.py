"""Patch datasets for training (random crops + flips/rot90) and validation (fixed crops)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from hazematching.data.normalization import Normalizer
from hazematching.data.pairs import PairedImages
from hazematching.io import ImageError


def _normalised_planes(pairs: PairedImages, norm: Normalizer, patch: int
                       ) -> tuple[list[np.ndarray], list[str]]:
    """Stack each plane as (1 + C, Y, X) float32: channel 0 target, then inputs."""
    planes, names = [], []
    for name, t, x in zip(pairs.names, pairs.targets, pairs.inputs, strict=True):
        if min(t.shape[-2:]) < patch:
            raise ImageError(f"{name}: image of size {t.shape[-2]}×{t.shape[-1]} is smaller than "
                             f"the patch size {patch}; lower data.patch_size or drop the image")
        tn = norm.normalize_target(t)[:, None]
        xn = norm.normalize_input(x)
        both = np.concatenate([tn, xn], axis=1)
        planes.extend(both)
        names.extend(f"{name}[{i}]" for i in range(len(both)))
    return planes, names


class RandomPatches(Dataset):
    """Random patches with random flips and 90° rotations.

    Item i is drawn from a generator seeded by (seed, epoch, i), so ranks of a distributed run
    (which see different indices) draw different patches and runs are reproducible. Planes are
    picked with probability proportional to their area.

    Returns ``(target (1, P, P), cond (C, P, P))`` float32 tensors.
    """

    def __init__(self, pairs: PairedImages, norm: Normalizer, patch_size: int, *,
                 length: int | None = None, augment: bool = True, seed: int = 0):
        self.planes, _ = _normalised_planes(pairs, norm, patch_size)
        self.patch = patch_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        areas = np.array([p.shape[-1] * p.shape[-2] for p in self.planes], np.float64)
        self.prob = areas / areas.sum()
        self.length = length or max(len(self.planes), int(areas.sum() // patch_size**2))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        plane = self.planes[rng.choice(len(self.planes), p=self.prob)]
        y = rng.integers(0, plane.shape[-2] - self.patch + 1)
        x = rng.integers(0, plane.shape[-1] - self.patch + 1)
        crop = plane[:, y:y + self.patch, x:x + self.patch]
        if self.augment:
            crop = np.rot90(crop, k=int(rng.integers(4)), axes=(-2, -1))
            if rng.integers(2):
                crop = crop[..., ::-1]
        crop = torch.from_numpy(np.ascontiguousarray(crop))
        return crop[:1], crop[1:]


class FixedPatches(Dataset):
    """Deterministic, non-overlapping patches on a regular grid (validation).

    At most `max_patches` patches are kept, spread evenly over the grid.
    """

    def __init__(self, pairs: PairedImages, norm: Normalizer, patch_size: int,
                 max_patches: int = 512):
        planes, _ = _normalised_planes(pairs, norm, patch_size)
        p = patch_size
        crops = [(i, y, x) for i, pl in enumerate(planes)
                 for y in range(0, pl.shape[-2] - p + 1, p)
                 for x in range(0, pl.shape[-1] - p + 1, p)]
        if len(crops) > max_patches:
            crops = [crops[int(k)] for k in np.linspace(0, len(crops) - 1, max_patches)]
        self.planes, self.crops, self.patch = planes, crops, p

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, y, x = self.crops[index]
        crop = torch.from_numpy(np.ascontiguousarray(
            self.planes[i][:, y:y + self.patch, x:x + self.patch]))
        return crop[:1], crop[1:]
