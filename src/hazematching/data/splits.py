"""Deterministic train/val/test splits and pre-cropped patches, in the paper's dataset layout.

From a folder of large paired images (either layout, see :func:`~hazematching.data.pairs.
load_pairs`) this writes::

    out/train/  out/val/  out/test/      whole images, one per file
    out/train_crop/  out/val_crop/       non-overlapping patch_size × patch_size patches
    out/split.json                       which image went where, and the settings used

Every file is a paper-layout TIFF: channel 0 = confocal target, channel 1.. = widefield input
(CYX, or ZCYX for stacks), float32. Images are assigned to splits as a whole (never plane by
plane), by a seeded permutation of the sorted file names, so the same inputs and seed always
give the same split. Everything is written into a temporary folder next to `out`, then renamed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hazematching.data.pairs import Layout, PairedImages, load_pairs
from hazematching.io import staging_dir, write_tiff

SPLITS = ("train", "val", "test")
#: Splits that also get a ``<split>_crop/`` folder of patches (the test set stays whole).
CROPPED = ("train", "val")


@dataclass
class SplitSummary:
    """What :func:`split_dataset` wrote: image names per split and patch counts per folder."""

    root: Path
    images: dict[str, list[str]] = field(default_factory=dict)
    patches: dict[str, int] = field(default_factory=dict)


def assign_splits(n_images: int, val_fraction: float, test_fraction: float,
                  seed: int = 0) -> dict[str, list[int]]:
    """Indices of the images in each split (sorted), from a seeded permutation.

    A non-zero fraction always gets at least one image; training keeps at least one.
    """
    for label, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{label} must be in [0, 1), got {frac}")
    n_val = max(1, round(val_fraction * n_images)) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n_images)) if test_fraction > 0 else 0
    if n_images - n_val - n_test < 1:
        raise ValueError(f"{n_images} image(s) cannot be split into {n_val} validation, {n_test} "
                         f"test and at least 1 training image; add images or lower the fractions")
    order = np.random.default_rng(seed).permutation(n_images)
    return {"test": sorted(order[:n_test].tolist()),
            "val": sorted(order[n_test:n_test + n_val].tolist()),
            "train": sorted(order[n_test + n_val:].tolist())}


def split_dataset(src: str | Path, out: str | Path, *, val_fraction: float = 0.1,
                  test_fraction: float = 0.1, patch_size: int = 128, seed: int = 0,
                  layout: Layout = "auto", axes: str | None = None) -> SplitSummary:
    """Split the pairs in `src` by image and write the paper layout to `out` (see module doc).

    Args:
        src: folder of paired images (paper layout or input/ + target/).
        out: dataset folder to create; it must not exist yet.
        val_fraction, test_fraction: shares of the images held out (each >= 1 image if > 0).
        patch_size: side of the exported training/validation patches (px).
        seed: seed of the permutation that assigns images to splits.
        layout, axes: how to read `src` (as for :func:`load_pairs`).

    Raises:
        FileExistsError: `out` exists.
        ValueError: too few images for the fractions, or an image smaller than a patch.
        ImageError: unreadable or mismatched input files.
    """
    src, out = Path(src), Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new output folder (nothing is "
                              f"overwritten)")
    if patch_size < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    pairs = load_pairs(src, layout, axes)
    small = [f"{n} ({t.shape[-2]}×{t.shape[-1]})" for n, t in zip(pairs.names, pairs.targets,
                                                                 strict=True)
             if min(t.shape[-2:]) < patch_size]
    if small:
        raise ValueError(f"image(s) smaller than patch_size {patch_size}: {', '.join(small[:5])}; "
                         f"lower --patch-size")
    assignment = assign_splits(len(pairs), val_fraction, test_fraction, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out.parent, f".{out.name}.", ".partial")
    summary = SplitSummary(root=out)
    try:
        for split in SPLITS:
            idx = assignment[split]
            summary.images[split] = [pairs.names[i] for i in idx]
            for i in idx:
                _write_image(staging / split, pairs, i)
            if split in CROPPED:
                summary.patches[f"{split}_crop"] = sum(
                    _write_patches(staging / f"{split}_crop", pairs, i, patch_size) for i in idx)
        manifest = {"source": str(src.resolve()), "seed": seed, "val_fraction": val_fraction,
                    "test_fraction": test_fraction, "patch_size": patch_size,
                    "images": summary.images, "patches": summary.patches}
        (staging / "split.json").write_text(json.dumps(manifest, indent=2))
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _paper_array(pairs: PairedImages, i: int) -> np.ndarray:
    """(N, 1 + C, Y, X): target as channel 0, inputs after it."""
    return np.concatenate([pairs.targets[i][:, None], pairs.inputs[i]], axis=1)


def _write_image(folder: Path, pairs: PairedImages, i: int) -> None:
    planes = _paper_array(pairs, i)
    if planes.shape[0] == 1:
        write_tiff(folder / f"{pairs.names[i]}.tif", planes[0], "CYX")
    else:
        write_tiff(folder / f"{pairs.names[i]}.tif", planes, "ZCYX")


def _write_patches(folder: Path, pairs: PairedImages, i: int, size: int) -> int:
    """Non-overlapping patches on a regular grid from the top-left corner; returns the count.

    Remainders narrower than a patch at the bottom/right edges are left out, so every patch is
    real data (no padding).
    """
    planes = _paper_array(pairs, i)
    n_planes, _, height, width = planes.shape
    count = 0
    for z in range(n_planes):
        plane_tag = f"_z{z:03d}" if n_planes > 1 else ""
        for y in range(0, height - size + 1, size):
            for x in range(0, width - size + 1, size):
                name = f"{pairs.names[i]}{plane_tag}_y{y:05d}_x{x:05d}.tif"
                write_tiff(folder / name, planes[z, :, y:y + size, x:x + size], "CYX")
                count += 1
    return count
