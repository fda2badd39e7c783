"""Paired widefield/confocal images on disk: discovery, validation and loading.

Two layouts are read:

* ``paper``: one TIFF per sample with a channel axis, channel 0 = confocal target, channel 1..C =
  widefield input (the paper's ``train_crop/``, ``val_crop/``, ``train/``, ``val/``, ``test/``).
* ``input_target``: sub-folders ``input/`` and ``target/`` holding files with matching names.

Either may hold OME-Zarr images (``.zarr``/``.ome.zarr`` folders) instead of TIFFs, or both.

Stacks (``ZYX``/``TYX``/``SYX``) are used plane by plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hazematching.io import (
    ImageError,
    check_axes,
    image_name,
    list_images,
    read_image,
    to_planes,
)

Layout = Literal["auto", "paper", "input_target"]
SPLIT_NAMES = (("train_crop", "val_crop"), ("train", "val"))


@dataclass
class PairedImages:
    """Loaded pairs, raw intensities (float32).

    Attributes:
        names: one name per image (file stem).
        targets: per image, planes (N, Y, X).
        inputs: per image, planes (N, C, Y, X).
    """

    names: list[str]
    targets: list[np.ndarray]
    inputs: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def n_planes(self) -> int:
        return sum(t.shape[0] for t in self.targets)

    def split(self, val_fraction: float, seed: int = 0) -> tuple[PairedImages, PairedImages]:
        """Deterministic split by image (never by plane, so that no image leaks into both)."""
        if len(self) < 2:
            raise ImageError(f"need at least 2 images to hold out a validation set, found "
                             f"{len(self)}; give a separate validation folder")
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = max(1, int(round(val_fraction * len(self))))
        pick = lambda idx: PairedImages([self.names[i] for i in idx],  # noqa: E731
                                        [self.targets[i] for i in idx],
                                        [self.inputs[i] for i in idx])
        return pick(sorted(order[n_val:])), pick(sorted(order[:n_val]))

    def crops(self, max_pixels: int, size: int, seed: int = 0) -> PairedImages:
        """Square crops of side `size` (or the plane's own, if smaller), at most `max_pixels`
        pixels in all, spread over the images and their planes in turn: a bounded subset for
        work whose cost grows with the pixels (e.g. fitting the calibration).

        Planes are visited round-robin over images (image 0 plane 0, image 1 plane 0, …, then
        every image's plane 1, …); each gives one crop at a seeded random position. All
        planes fit within the budget: the pairs are returned whole.

        Returns:
            One pair per crop, named ``<image>_z<plane>_y<row>_x<col>``; targets (1, h, w),
            inputs (1, C, h, w).
        """
        if sum(t.size for t in self.targets) <= max_pixels:
            return self
        rng = np.random.default_rng(seed)
        names, targets, inputs = [], [], []
        used = 0
        depth = max(t.shape[0] for t in self.targets)
        for z in range(depth):
            for name, t, x in zip(self.names, self.targets, self.inputs, strict=True):
                if z >= t.shape[0]:
                    continue
                h, w = min(size, t.shape[1]), min(size, t.shape[2])
                if used + h * w > max_pixels and used:
                    return PairedImages(names, targets, inputs)
                y0 = int(rng.integers(0, t.shape[1] - h + 1))
                x0 = int(rng.integers(0, t.shape[2] - w + 1))
                names.append(f"{name}_z{z}_y{y0}_x{x0}")
                targets.append(t[z:z + 1, y0:y0 + h, x0:x0 + w])
                inputs.append(x[z:z + 1, :, y0:y0 + h, x0:x0 + w])
                used += h * w
        return PairedImages(names, targets, inputs)


def detect_layout(folder: Path) -> Literal["paper", "input_target"]:
    """'input_target' when `folder` has input/ and target/ sub-folders, else 'paper'."""
    return "input_target" if (folder / "input").is_dir() and (folder / "target").is_dir() \
        else "paper"


def resolve_split_dirs(root: str | Path) -> tuple[Path, Path | None]:
    """Find the (train, val) folders under a dataset root (train_crop/val_crop or train/val).

    A folder that itself holds pairs is returned as the training folder with no validation
    folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root}: no such folder")
    for tr, va in SPLIT_NAMES:
        if (root / tr).is_dir():
            return root / tr, (root / va) if (root / va).is_dir() else None
    return root, None


def _paper_axes(array: np.ndarray, axes: str | None, path: Path) -> str:
    if axes is not None:
        return axes
    if array.ndim == 3:
        return "CYX"
    if array.ndim == 4:
        return "ZCYX"
    raise ImageError(f"{path}: a paper-layout file must be CYX (channel 0 target, channel 1 "
                     f"input) or ZCYX, got shape {array.shape}")


def load_pairs(folder: str | Path, layout: Layout = "auto",
               axes: str | None = None) -> PairedImages:
    """Read every pair in `folder`.

    Args:
        folder: a folder in one of the two layouts.
        layout: 'paper', 'input_target' or 'auto' (detect).
        axes: axes of the files (paper layout: must contain C, e.g. 'CYX'; input_target: of the
            input files, the target files have the same axes without C). None: from metadata.

    Raises:
        ImageError: empty folder, unreadable file, missing partner, shape mismatch, NaN/Inf.
    """
    folder = Path(folder)
    if layout == "auto":
        layout = detect_layout(folder)
    names, targets, inputs = [], [], []
    if layout == "paper":
        for path in list_images(folder):
            arr, ax = read_image(path, axes)
            if axes is None and "C" not in ax:  # no channel axis in the metadata
                ax = check_axes(_paper_axes(arr, None, path), arr.ndim, str(path))
            if "C" not in ax:
                raise ImageError(f"{path}: paper-layout files need a channel axis (C), got axes "
                                 f"{ax!r}")
            planes = to_planes(arr, ax)
            if planes.shape[1] < 2:
                raise ImageError(f"{path}: paper-layout files need >= 2 channels (0 = confocal "
                                 f"target, 1 = widefield input), found {planes.shape[1]}")
            names.append(image_name(path))
            targets.append(planes[:, 0].astype(np.float32))
            inputs.append(planes[:, 1:].astype(np.float32))
    else:
        in_dir, tg_dir = folder / "input", folder / "target"
        in_files = list_images(in_dir)
        tg_by_name = {p.name: p for p in list_images(tg_dir)}
        missing = [p.name for p in in_files if p.name not in tg_by_name]
        if missing:
            raise ImageError(f"{tg_dir}: no target for input file(s) {', '.join(missing[:5])}"
                             f"{' …' if len(missing) > 5 else ''}; names must match")
        for path in in_files:
            x, ax = read_image(path, axes)
            tpath = tg_by_name[path.name]
            y, tax = read_image(tpath, ax.replace("C", "") if axes else None)
            xp, yp = to_planes(x, ax), to_planes(y, tax)
            if xp.shape[0] != yp.shape[0] or xp.shape[2:] != yp.shape[2:]:
                raise ImageError(f"{path} ({ax} {x.shape}) and {tpath} ({tax} {y.shape}) do not "
                                 f"match: input and target must have the same planes and size")
            if yp.shape[1] != 1:
                raise ImageError(f"{tpath}: the target must have one channel, found {yp.shape[1]}")
            names.append(image_name(path))
            targets.append(yp[:, 0].astype(np.float32))
            inputs.append(xp.astype(np.float32))
    n_ch = {i.shape[1] for i in inputs}
    if len(n_ch) > 1:
        raise ImageError(f"{folder}: images have different numbers of input channels "
                         f"{sorted(n_ch)}")
    return PairedImages(names, targets, inputs)
