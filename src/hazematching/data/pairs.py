"""Paired widefield/confocal images on disk: discovery, validation and loading.

Two layouts are read:

* ``paper``: one TIFF per sample with a channel axis, channel 0 = confocal target, channel 1..C =
  widefield input (the paper's ``train_crop/``, ``val_crop/``, ``train/``, ``val/``, ``test/``).
* ``input_target``: sub-folders ``input/`` and ``target/`` holding files with matching names.

Stacks (``ZYX``/``TYX``/``SYX``) are used plane by plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hazematching.io import ImageError, list_images, read_image, to_planes

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
            raw, _ = read_image(path)
            ax = _paper_axes(raw, axes, path)
            arr, ax = read_image(path, ax)
            if "C" not in ax:
                raise ImageError(f"{path}: paper-layout files need a channel axis (C), got axes "
                                 f"{ax!r}")
            planes = to_planes(arr, ax)
            if planes.shape[1] < 2:
                raise ImageError(f"{path}: paper-layout files need >= 2 channels (0 = confocal "
                                 f"target, 1 = widefield input), found {planes.shape[1]}")
            names.append(path.stem)
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
            names.append(path.stem)
            targets.append(yp[:, 0].astype(np.float32))
            inputs.append(xp.astype(np.float32))
    n_ch = {i.shape[1] for i in inputs}
    if len(n_ch) > 1:
        raise ImageError(f"{folder}: images have different numbers of input channels "
                         f"{sorted(n_ch)}")
    return PairedImages(names, targets, inputs)
