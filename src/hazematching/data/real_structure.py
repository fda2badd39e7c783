"""Widefield/confocal pairs whose ground truth is real fluorescence structure, split by region.

Two openly licensed images ship with the package (``data/assets``, provenance and licences in
its README.md), each of a different kind of structure:

* ``nuclei``: a 2-D widefield image of stained nuclei (BBBC038v1 / 2018 Data Science Bowl,
  CC0), made a sample of depth ``thickness_um``: every plane within it holds the image;
* ``membranes``: a 3-D confocal stack of epithelial cell junctions (EpiTools sample data,
  BSD-3), used as it is: the focal plane lies in its junction layer and the planes above and
  below it are the out-of-focus sample.

Each image is divided into three regions (:func:`region_map`): validation and test are squares
in its right-hand corners, training is the rest. Every crop lies inside one region, so no
structure of a test image is ever seen in training, and the light smoothing that removes the
image's own shot noise is done within each region. A crop is resampled onto the simulation's
fine grid, turned by a random symmetry of the square, scaled to a fixed number of
fluorophores per voxel column on average (an auto-exposure: every image gets about the same
widefield photon budget) and imaged by :func:`~hazematching.data.simulate.microsim_images`
(microsim's confocal and widefield modalities, one camera).

The source pixel sizes are not recorded in the files; the values assumed here
(:data:`SOURCES`) give nuclei ~6 µm and epithelial cells ~4–5 µm across and leave room for
192-px validation/test images (large enough for MS-SSIM) in both images' squares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator
from scipy import ndimage

from hazematching.data.simulate import MicrosimOptics, microsim_images
from hazematching.data.synthetic import SPLITS, split_counts, with_overrides
from hazematching.io import read_image

SourceName = Literal["nuclei", "membranes"]
#: Region codes of :func:`region_map`.
REGION_CODE = {"train": 0, "val": 1, "test": 2}
# Share of the brightest plane's mean intensity a plane of a 3-D source needs to be a focal
# plane: the focus is drawn within the structure's layer, not in the empty planes around it.
_FOCUS_LEVEL = 0.5
# Percentile of a source image taken as its background (camera offset and autofluorescence).
_BACKGROUND_PERCENTILE = 5.0


@dataclass(frozen=True)
class RealSource:
    """One shipped image: its file in ``data/assets``, what it shows and its assumed voxel size."""

    name: str
    file: str
    description: str
    voxel_um: tuple[float, float, float]  # (dz, dy, dx); dz unused for 2-D images
    licence: str
    credit: str


SOURCES: dict[str, RealSource] = {
    "nuclei": RealSource(
        "nuclei", "nuclei_bbbc038.tif", "stained nuclei, 2-D widefield, 512×512",
        (1.0, 0.2, 0.2), "CC0 1.0",
        "BBBC038v1 (2018 Data Science Bowl; Caicedo et al., Nat. Methods 2019), via the stardist "
        "wheel"),
    "membranes": RealSource(
        "membranes", "membranes_epitools.tif", "epithelial cell junctions, 3-D confocal, "
        "30×199×206", (0.5, 0.3, 0.3), "BSD-3-Clause",
        "EpiTools sample data (Y. Mao lab, UCL), via the epitools wheel"),
}


class RealStructureConfig(MicrosimOptics):
    """A dataset of pairs from the shipped real structures (all but the pair count and seed).

    Inherits the grid, optics and camera of :class:`~hazematching.data.simulate.MicrosimOptics`;
    ``size`` is the side of the training images.
    """

    sources: list[SourceName] = Field(["nuclei", "membranes"], min_length=1, description=(
        "Structures to crop, taken in turn: pair j of a split comes from sources[j % len]."))
    eval_size: int = Field(192, ge=16, description="Side of the validation and test images, "
                           "camera pixels (MS-SSIM needs at least 176).")
    margin: int = Field(8, ge=0, description="Camera pixels of the sample imaged around every "
                        "image and cut away, so that light from just outside the field reaches "
                        "its edges as in a real field of view.")
    thickness_um: float = Field(5.0, gt=0.0, description="Depth of the sample made from a 2-D "
                                "image (nuclei: 5 µm, as tall as an adherent cell's nucleus), "
                                "centred on the focal plane and cut to the simulated depth; "
                                "its planes away from focus make the widefield haze.")
    denoise_sigma_px: float = Field(0.7, ge=0.0, description="Gaussian smoothing of the source "
                                    "images in their own pixels, against their shot noise, "
                                    "which would otherwise be simulated as structure.")
    concentration: float = Field(170.0, gt=0.0, description="Exposure: fluorophores per "
                                 "ground-truth voxel column (summed over the depth) on average "
                                 "over each image, which every crop is scaled to (~100 "
                                 "widefield signal photons per pixel).")

    @field_validator("sources")
    @classmethod
    def _unique(cls, sources: list[str]) -> list[str]:
        if len(set(sources)) != len(sources):
            raise ValueError(f"sources must not repeat, got {sources}")
        return sources


@dataclass
class RealPairs:
    """What :func:`simulate_real_structure` made: the images per split and where each came from.

    ``splits[s] = (target, widefield)``, float32 ``(n_s, side, side)`` camera ADU; ``crops``
    lists, in file order (train, val, test), each pair's split, source, crop window (source
    pixels ``y0, x0, height, width``), focal plane (source plane, 3-D sources) and symmetry.
    """

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    crops: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------ sources


@lru_cache(maxsize=None)
def _raw_source(name: str) -> np.ndarray:
    source = SOURCES[name]
    path = resources.files("hazematching.data") / "assets" / source.file
    if not path.is_file():
        raise FileNotFoundError(f"the {name} image {path} is missing (hazematching's "
                                f"data/assets); the installation is incomplete: reinstall "
                                f"hazematching")
    with resources.as_file(path) as file:
        array, axes = read_image(file)
    return (array if axes == "ZYX" else array[None]).astype(np.float32)


def load_structure(name: str) -> np.ndarray:
    """A shipped real structure as relative fluorophore density.

    The source's background (its 5th percentile) is subtracted and negative values clipped;
    the result is scaled to mean 1.

    Args:
        name: a key of :data:`SOURCES` ("nuclei", "membranes").

    Returns:
        float32 ``(Z, Y, X)`` ≥ 0 with mean 1, voxels of ``SOURCES[name].voxel_um``; Z = 1 for a
        2-D source.

    Raises:
        ValueError: unknown name (the known ones are listed).
    """
    if name not in SOURCES:
        raise ValueError(f"unknown structure {name!r}; choose from {', '.join(SOURCES)}")
    raw = _raw_source(name)
    density = np.clip(raw - np.percentile(raw, _BACKGROUND_PERCENTILE), 0.0, None)
    return (density / density.mean(dtype=np.float64)).astype(np.float32)


def region_map(shape_yx: tuple[int, int], fractions: Sequence[float]) -> np.ndarray:
    """Which split each pixel of an image belongs to: val and test squares on the right edge.

    The validation square sits in the top-right corner, the test square in the bottom-right
    corner, each with ``fraction × area`` pixels (side rounded); training gets the rest, so the
    regions never overlap and together cover the image.

    Args:
        shape_yx: ``(Y, X)`` of the image.
        fractions: (train, val, test) area fractions summing to 1.

    Returns:
        int8 ``(Y, X)``: :data:`REGION_CODE` of each pixel.

    Raises:
        ValueError: the two squares do not fit in the image.
    """
    split_counts(10**6, fractions)  # validates the fractions
    height, width = shape_yx
    sides = {s: round(math.sqrt(f * height * width)) for s, f in zip(
        ("val", "test"), fractions[1:], strict=True)}
    if sides["val"] + sides["test"] > height or max(sides.values()) > width:
        raise ValueError(f"val/test squares of {sides['val']} and {sides['test']} px do not fit "
                         f"in a {height}×{width} image; lower the val/test fractions")
    regions = np.full(shape_yx, REGION_CODE["train"], dtype=np.int8)
    regions[:sides["val"], width - sides["val"]:] = REGION_CODE["val"]
    regions[height - sides["test"]:, width - sides["test"]:] = REGION_CODE["test"]
    return regions


def crop_origins(regions: np.ndarray, split: str, window: int) -> np.ndarray:
    """Top-left corners ``(K, 2)`` (y, x) of every ``window × window`` crop inside one region.

    Raises:
        ValueError: no crop of that size fits in the region.
    """
    inside = (regions == REGION_CODE[split]).astype(np.int64)
    table = np.pad(inside.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    if window > min(regions.shape):
        counts = np.zeros((0, 0))
    else:
        counts = (table[window:, window:] - table[:-window, window:]
                  - table[window:, :-window] + table[:-window, :-window])
    origins = np.argwhere(counts == window * window)
    if not len(origins):
        area = int(inside.sum())
        raise ValueError(f"no {window}×{window}-pixel crop fits in the {split} region "
                         f"({area} pixels of a {regions.shape[0]}×{regions.shape[1]} image); "
                         f"lower --size/--eval-size or --margin, or raise the {split} fraction")
    return origins


@lru_cache(maxsize=32)
def _region_density(name: str, split: str, fractions: tuple[float, ...],
                    sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The source's density smoothed within one region only, and the region map."""
    density = load_structure(name)
    regions = region_map(density.shape[1:], fractions)
    mask = (regions == REGION_CODE[split]).astype(np.float32)
    if sigma == 0:
        return density * mask, regions
    # Normalised convolution: pixels of other regions neither contribute nor dim the edges.
    sig = (0.0, sigma, sigma)
    weight = ndimage.gaussian_filter(np.broadcast_to(mask, density.shape), sig)
    smooth = ndimage.gaussian_filter(density * mask, sig)
    return np.where(mask > 0, smooth / np.maximum(weight, 1e-6), 0.0).astype(np.float32), regions


@lru_cache(maxsize=None)
def focal_planes(name: str) -> tuple[float, float]:
    """Range ``(lo, hi)`` of a 3-D source's planes from which its focal plane is drawn: the
    planes whose mean is at least half the brightest plane's mean."""
    profile = load_structure(name).mean(axis=(1, 2))
    planes = np.flatnonzero(profile >= _FOCUS_LEVEL * profile.max())
    return float(planes.min()), float(planes.max())


def _slab_weights(config: RealStructureConfig) -> np.ndarray:
    """Fraction of each plane (``depth``,) inside a slab of ``thickness_um`` centred on focus."""
    centres = (np.arange(config.depth) - config.depth // 2) * config.dz_um
    half = config.thickness_um / 2
    overlap = (np.minimum(centres + config.dz_um / 2, half)
               - np.maximum(centres - config.dz_um / 2, -half))
    return np.clip(overlap / config.dz_um, 0.0, 1.0).astype(np.float32)


def _resample_plane(window: np.ndarray, n_fine: int, step: float) -> np.ndarray:
    """Linear resampling of a ``(H, W)`` window onto ``n_fine²`` voxels ``step`` source px apart
    (pixel centres aligned; reads only the window)."""
    return ndimage.affine_transform(window, np.array([step, step]), offset=0.5 * step - 0.5,
                                    output_shape=(n_fine, n_fine), order=1, mode="nearest")


def crop_window(name: str, config: RealStructureConfig, side: int) -> tuple[int, int, float]:
    """``(window, n_fine, step)``: the source pixels a crop reads (square side), the fine voxels
    it becomes (square side) and their spacing in source pixels, for an image of `side` camera
    pixels plus the margins."""
    n_fine = (side + 2 * config.margin) * config.upsample
    step = config.pixel_size_um / config.upsample / SOURCES[name].voxel_um[2]
    # One source pixel more than the span, so that linear interpolation reads only the window.
    return math.ceil(n_fine * step) + 1, n_fine, step


def render_crop(name: str, split: str, config: RealStructureConfig, side: int,
                rng: np.random.Generator, fractions: Sequence[float]
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """One random ground truth from one region of a source, ready for microsim.

    Args:
        name: source name. split: the region to crop from.
        config: grid and sample parameters. side: output image side (camera pixels).
        rng: the only randomness (crop position, focal plane, symmetry).
        fractions: (train, val, test) area fractions of :func:`region_map`.

    Returns:
        ``(volume, crop)``: float32 ``(depth, (side + 2·margin)·upsample, same)`` fluorophores
        per voxel with the focal plane at ``depth // 2``, and the crop's provenance.
    """
    source = SOURCES[name]
    density, regions = _region_density(name, split, tuple(fractions), config.denoise_sigma_px)
    window, n_fine, step = crop_window(name, config, side)
    origins = crop_origins(regions, split, window)
    y0, x0 = (int(v) for v in origins[rng.integers(len(origins))])
    lateral = density[:, y0:y0 + window, x0:x0 + window]
    crop: dict[str, Any] = {"split": split, "source": name,
                            "window_yxhw": [y0, x0, window, window]}
    if density.shape[0] == 1:
        plane = _resample_plane(lateral[0], n_fine, step)
        volume = _slab_weights(config)[:, None, None] * plane[None]
    else:
        lo, hi = focal_planes(name)
        focus = float(rng.uniform(lo, hi))
        z = focus + (np.arange(config.depth) - config.depth // 2) * config.dz_um / \
            source.voxel_um[0]
        volume = np.zeros((config.depth, n_fine, n_fine), dtype=np.float32)
        planes: dict[int, np.ndarray] = {}
        for k, zk in enumerate(z):
            below = math.floor(zk)
            for index, weight in ((below, 1.0 - (zk - below)), (below + 1, zk - below)):
                # Planes beyond the stack are outside the sample: they add nothing.
                if weight > 0 and 0 <= index < density.shape[0]:
                    if index not in planes:
                        planes[index] = _resample_plane(lateral[index], n_fine, step)
                    volume[k] += weight * planes[index]
        crop["focal_plane"] = round(focus, 3)
    symmetry = int(rng.integers(8))
    volume = np.rot90(volume, symmetry % 4, axes=(1, 2))
    if symmetry >= 4:
        volume = volume[:, :, ::-1]
    crop["symmetry"] = symmetry
    # Auto-exposure: the widefield signal is about proportional to the fluorophores in each
    # column, so every image, dense or sparse, 2-D slab or 3-D stack, gets a similar photon budget.
    columns = float(volume.sum(axis=0).mean(dtype=np.float64))
    if columns <= 0:
        raise ValueError(f"the {name} crop at {crop['window_yxhw']} is empty; nothing to image")
    scale = config.concentration / columns
    return np.ascontiguousarray(volume * scale, dtype=np.float32), crop


def simulate_real_structure(n: int, *, seed: int = 0, config: RealStructureConfig | None = None,
                            split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
                            progress: bool = False, **params: Any) -> RealPairs:
    """Simulate `n` (confocal target, widefield input) pairs from the shipped real structures.

    The pairs are divided into train/val/test by :func:`~hazematching.data.synthetic.
    split_counts` of `split_fractions`, and each split's pairs are cropped from that split's
    region only (:func:`region_map`, with the same fractions as areas). Pair j of a split
    depends only on ``(seed, split, j)`` and the config.

    Args:
        n: number of pairs (≥ 1).
        seed: random seed.
        config: parameters; None = :class:`RealStructureConfig` defaults.
        split_fractions: (train, val, test) fractions of the pairs and of each image's area.
        progress: show a progress bar per split.
        **params: any :class:`RealStructureConfig` field, overriding `config`.

    Returns:
        The pairs per split (train images ``size``, val/test ``eval_size`` pixels square) and
        the provenance of every crop.

    Raises:
        ValueError: a crop does not fit in a region (with the sizes to change).
        ImportError: microsim is not installed (``pip install 'hazematching[simulate]'``).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 pairs, got {n}")
    cfg = with_overrides(config or RealStructureConfig(), **params)
    fractions = tuple(float(f) for f in split_fractions)
    counts = split_counts(n, fractions)
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(3)]
    sides = {split: cfg.size if split == "train" else cfg.eval_size for split in SPLITS}
    for split in SPLITS:  # every crop size must fit before anything is simulated
        for name in cfg.sources[:counts[split]]:
            regions = _region_density(name, split, fractions, cfg.denoise_sigma_px)[1]
            crop_origins(regions, split, crop_window(name, cfg, sides[split])[0])
    result = RealPairs(splits={})
    for split, split_seed in zip(SPLITS, seeds, strict=True):
        side = sides[split]
        if counts[split] == 0:
            empty = np.empty((0, side, side), dtype=np.float32)
            result.splits[split] = (empty, empty.copy())
            continue
        crops: list[dict[str, Any]] = []

        def truth(j: int, pair_seed: int, split: str = split, side: int = side,
                  crops: list[dict[str, Any]] = crops) -> np.ndarray:
            name = cfg.sources[j % len(cfg.sources)]
            volume, crop = render_crop(name, split, cfg, side,
                                       np.random.default_rng(pair_seed), fractions)
            crops.append(crop)
            return volume

        grid = MicrosimOptics.model_validate(
            {**cfg.model_dump(include=set(MicrosimOptics.model_fields)), "size": side})
        result.splits[split] = microsim_images(
            counts[split], truth, seed=split_seed, config=grid, margin=cfg.margin,
            progress=progress, description=f"real structure pairs ({split})")
        result.crops += crops
    return result


__all__ = ["REGION_CODE", "SOURCES", "RealPairs", "RealSource", "RealStructureConfig",
           "crop_origins", "crop_window", "focal_planes", "load_structure", "region_map",
           "render_crop", "simulate_real_structure"]
