"""Fast synthetic widefield/confocal training pairs from random 3-D structures (numpy + scipy.fft).

Each sample is a random volume of filaments (smooth 3-D curves) and/or blobs (filled spheres and
hollow vesicles), periodic laterally. The *widefield input* is the camera image focused on the
central plane: the whole volume convolved with the widefield PSF (see :mod:`.psf`), so
out-of-focus structure arrives as haze, plus background, shot noise and read noise. The
*target* is the confocal image of the same plane: the volume convolved with the confocal PSF,
which rejects most out-of-focus light (sharp, little haze), noise-free unless asked otherwise.

Lateral periodicity lets every convolution be an exact circular FFT convolution on the image
grid: no padding, no dark borders, and defocused light that leaves one side comes back in on the
other, as it would from the neighbouring sample.

:func:`write_pairs` stores pairs in the "paper layout" the trainer reads.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field
from scipy import fft

from hazematching.data.psf import OpticsConfig, image_focal_planes
from hazematching.io import staging_dir, write_tiff

_M = TypeVar("_M", bound=BaseModel)
Structure = Literal["filaments", "blobs", "mixed"]
SPLITS = ("train", "val", "test")
METADATA_FILE = "simulation.yaml"

# Samples simulated per FFT batch: ~70 MB of volume and spectrum at 32×128×128 per sample.
_BATCH = 8
# Filament geometry (µm): persistence length of the random walk of the direction, length range.
_PERSISTENCE_UM = 5.0
_FILAMENT_LENGTH_UM = (3.0, 12.0)
# Blob radius range (µm): small vesicles up to large endosome-like blobs.
_BLOB_RADIUS_UM = (0.15, 0.6)


class CameraConfig(BaseModel):
    """Camera model: ``ADU = gain · (Poisson(qe · photons) + Normal(0, read_noise²)) + offset``.

    Values stay float32 (no ADC rounding or saturation), so the mean is
    ``offset + gain · qe · photons`` and the variance ``gain² · (qe · photons + read_noise²)``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    qe: float = Field(0.8, gt=0.0, le=1.0, description="Quantum efficiency (electrons/photon).")
    read_noise: float = Field(1.6, ge=0.0, description="Read noise, electrons rms (sCMOS ~1.6).")
    gain: float = Field(1.0, gt=0.0, description="Conversion gain, ADU per electron.")
    offset: float = Field(100.0, ge=0.0, description="Camera offset (dark level), ADU.")


def apply_camera(photons: np.ndarray, camera: CameraConfig, rng: np.random.Generator
                 ) -> np.ndarray:
    """Record an expected photon image with the camera: shot noise, read noise, gain, offset.

    Args:
        photons: expected photons per pixel (any shape, ≥ 0), float.
        camera: the camera model.
        rng: random generator (the only source of randomness).

    Returns:
        float32 array of the same shape, in ADU.
    """
    if np.any(photons < 0):
        raise ValueError("expected photon counts must be >= 0; got negative values (check the "
                         "background and scaling)")
    electrons = rng.poisson(camera.qe * photons).astype(np.float32)
    electrons += rng.normal(0.0, camera.read_noise, size=photons.shape).astype(np.float32)
    return (camera.gain * electrons + camera.offset).astype(np.float32)


def expected_camera_signal(photons: np.ndarray, camera: CameraConfig) -> np.ndarray:
    """Noise-free camera reading (ADU) of an expected photon image: ``offset + gain·qe·photons``."""
    return (camera.offset + camera.gain * camera.qe * photons).astype(np.float32)


class SyntheticConfig(OpticsConfig, CameraConfig):
    """Everything that defines a synthetic dataset except the number of pairs and the seed.

    Defaults: a 60×/1.4 oil objective, 0.1 µm pixels, a 12.8 × 12.8 × 8 µm volume, structures
    throughout the depth (strong widefield haze) and an sCMOS camera at ~100 signal photons per
    pixel.
    """

    size: int = Field(128, ge=16, description="Side of the square images, pixels.")
    depth: int = Field(32, ge=3, description="Planes of the simulated volume; the focal plane "
                       "is plane depth // 2. More planes = more out-of-focus haze.")
    pixel_size_um: float = Field(0.1, gt=0.0, description="Lateral pixel size in the sample, µm.")
    dz_um: float = Field(0.25, gt=0.0, description="Plane spacing of the volume, µm.")
    structure: Structure = Field("mixed", description="'filaments' (smooth 3-D curves), 'blobs' "
                                 "(filled spheres and hollow vesicles) or 'mixed' (both).")
    filament_density: float = Field(30.0, ge=0.0, description="Filaments per 1000 µm³ of volume "
                                    "(each 3–12 µm long).")
    blob_density: float = Field(60.0, ge=0.0, description="Blobs per 1000 µm³ of volume (radius "
                                "0.15–0.6 µm; half filled, half hollow vesicles).")
    in_focus_fraction: float = Field(0.3, ge=0.0, le=1.0, description="Fraction of structures "
                                     "placed at the focal plane, so every target has content.")
    photons: float = Field(100.0, gt=0.0, description="Mean signal photons per pixel of the "
                           "noise-free widefield image (each sample is scaled to it); the "
                           "target uses the same scale.")
    background: float = Field(10.0, ge=0.0, description="Uniform background photons per pixel "
                              "added to the widefield image (autofluorescence, stray light).")
    target_noise: bool = Field(False, description="Record the target with the camera's shot and "
                               "read noise too (default: noise-free expected signal, in ADU).")

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        """``(dz, dy, dx)`` of the simulated volume in µm."""
        return (self.dz_um, self.pixel_size_um, self.pixel_size_um)


# ---------------------------------------------------------------------------- random structures


def _fold(z: np.ndarray, top: float) -> np.ndarray:
    """Reflect coordinates into ``[0, top]`` (structures bounce off the volume's faces)."""
    if top <= 0:
        return np.zeros_like(z)
    t = np.mod(z, 2.0 * top)
    return top - np.abs(t - top)


def _focus_or_uniform_z(rng: np.random.Generator, n: int, cfg: SyntheticConfig
                        ) -> tuple[np.ndarray, np.ndarray]:
    """z (µm) of `n` structures and whether each was placed at the focal plane."""
    top = (cfg.depth - 1) * cfg.dz_um
    focus = (cfg.depth // 2) * cfg.dz_um
    at_focus = rng.random(n) < cfg.in_focus_fraction
    return np.where(at_focus, focus + rng.normal(0.0, 0.5 * cfg.dz_um, n),
                    rng.uniform(0.0, top, n)), at_focus


def _filament_points(rng: np.random.Generator, n: int, cfg: SyntheticConfig
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Points along `n` smooth random 3-D curves: ``(P, 3)`` (z, y, x) in µm and weights ``(P,)``.

    Each curve is a persistent random walk sampled every half pixel; weights give every curve a
    constant brightness per µm of length.
    """
    step = 0.5 * cfg.pixel_size_um
    lengths = rng.uniform(*_FILAMENT_LENGTH_UM, n)
    n_steps = np.ceil(lengths / step).astype(int)
    s_max = int(n_steps.max())
    extent = cfg.size * cfg.pixel_size_um
    z0, at_focus = _focus_or_uniform_z(rng, n, cfg)
    start = np.stack([z0, rng.uniform(0, extent, n), rng.uniform(0, extent, n)], axis=1)
    # In-focus filaments lie almost flat, as cytoskeleton along the coverslip does; the others
    # may be tilted and so cross many planes.
    elevation0 = rng.normal(0.0, np.where(at_focus, 0.05, 0.3), n)
    azimuth0 = rng.uniform(0.0, 2.0 * np.pi, n)
    bend = math.sqrt(step / _PERSISTENCE_UM)
    azimuth = azimuth0[:, None] + np.cumsum(rng.normal(0.0, bend, (n, s_max)), axis=1)
    elevation = elevation0[:, None] + np.cumsum(rng.normal(0.0, 0.3 * bend, (n, s_max)), axis=1)
    direction = np.stack([np.sin(elevation), np.cos(elevation) * np.sin(azimuth),
                          np.cos(elevation) * np.cos(azimuth)], axis=-1)
    points = start[:, None, :] + step * np.cumsum(direction, axis=1)
    keep = np.arange(s_max)[None, :] < n_steps[:, None]
    brightness = rng.uniform(0.5, 1.5, n)
    weights = np.broadcast_to((brightness * step / cfg.pixel_size_um)[:, None], keep.shape)
    return points[keep], weights[keep]


def _splat(volume: np.ndarray, points_um: np.ndarray, weights: np.ndarray,
           cfg: SyntheticConfig) -> None:
    """Add point emitters to `volume` (Z, Y, X) with trilinear weights (periodic in y and x)."""
    nz, size = cfg.depth, cfg.size
    z = _fold(points_um[:, 0], (nz - 1) * cfg.dz_um) / cfg.dz_um
    yx = points_um[:, 1:] / cfg.pixel_size_um
    base = np.floor(np.column_stack([z, yx])).astype(np.int64)
    frac = np.column_stack([z, yx]) - base
    flat_idx, flat_w = [], []
    for corner in np.ndindex(2, 2, 2):
        c = np.asarray(corner)
        w = weights * np.prod(np.where(c == 1, frac, 1.0 - frac), axis=1)
        iz = np.minimum(base[:, 0] + c[0], nz - 1)
        iy = np.mod(base[:, 1] + c[1], size)
        ix = np.mod(base[:, 2] + c[2], size)
        flat_idx.append((iz * size + iy) * size + ix)
        flat_w.append(w)
    volume += np.bincount(np.concatenate(flat_idx), np.concatenate(flat_w),
                          minlength=volume.size).reshape(volume.shape).astype(volume.dtype)


def _add_blobs(volume: np.ndarray, rng: np.random.Generator, n: int,
               cfg: SyntheticConfig) -> None:
    """Add `n` filled spheres or hollow vesicles (anti-aliased over one pixel) to `volume`."""
    nz, size, dz, px = cfg.depth, cfg.size, cfg.dz_um, cfg.pixel_size_um
    radius = rng.uniform(*_BLOB_RADIUS_UM, n)
    hollow = rng.random(n) < 0.5
    brightness = rng.uniform(0.5, 1.5, n)
    extent = size * px
    z0, _ = _focus_or_uniform_z(rng, n, cfg)
    centre = np.stack([_fold(z0, (nz - 1) * dz), rng.uniform(0, extent, n),
                       rng.uniform(0, extent, n)], axis=1)
    # One box big enough for the largest sphere, shared by all blobs so the loop is vectorised;
    # the box is separable, so distances and indices are built from per-axis pieces.
    spacing = np.array([dz, px, px])
    half_xy = math.ceil(_BLOB_RADIUS_UM[1] / px) + 1
    half = (math.ceil(_BLOB_RADIUS_UM[1] / dz) + 1, half_xy, half_xy)
    voxel = np.rint(centre / spacing).astype(np.int64)
    axes_idx = [voxel[:, a, None] + np.arange(-h, h + 1)[None, :] for a, h in enumerate(half)]
    axes_d2 = [((i * d - centre[:, a, None]) ** 2).astype(np.float32)
               for a, (i, d) in enumerate(zip(axes_idx, spacing, strict=True))]
    dist = np.sqrt(axes_d2[0][:, :, None, None] + axes_d2[1][:, None, :, None]
                   + axes_d2[2][:, None, None, :])                      # (n, bz, by, bx) µm
    r = radius[:, None, None, None].astype(np.float32)
    # Filled blobs are dimmer per voxel than membranes so both have comparable total brightness.
    value = np.where(hollow[:, None, None, None],
                     np.clip(1.0 - np.abs(dist - r) / px, 0.0, 1.0),
                     0.3 * np.clip(0.5 + (r - dist) / px, 0.0, 1.0))
    value *= brightness[:, None, None, None].astype(np.float32)
    iz, iy, ix = axes_idx[0], np.mod(axes_idx[1], size), np.mod(axes_idx[2], size)
    flat = (iz[:, :, None, None] * size + iy[:, None, :, None]) * size + ix[:, None, None, :]
    inside = (iz[:, :, None, None] >= 0) & (iz[:, :, None, None] < nz) & (value > 0)
    volume += np.bincount(flat[inside], value[inside],
                          minlength=volume.size).reshape(volume.shape).astype(volume.dtype)


def render_volume(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """One random ground-truth volume.

    Returns:
        float32 ``(depth, size, size)`` relative emitter density (arbitrary units, ≥ 0, at least
        one structure), voxels of ``cfg.voxel_size_um``.
    """
    volume = np.zeros((cfg.depth, cfg.size, cfg.size), dtype=np.float32)
    thousand_um3 = cfg.depth * cfg.dz_um * (cfg.size * cfg.pixel_size_um) ** 2 / 1000.0
    want_filaments = cfg.structure in ("filaments", "mixed")
    want_blobs = cfg.structure in ("blobs", "mixed")
    n_fil = rng.poisson(cfg.filament_density * thousand_um3) if want_filaments else 0
    n_blob = rng.poisson(cfg.blob_density * thousand_um3) if want_blobs else 0
    if n_fil + n_blob == 0:
        # An empty volume would give an all-background pair; draw one structure instead.
        n_fil, n_blob = (1, 0) if want_filaments else (0, 1)
    if n_fil:
        _splat(volume, *_filament_points(rng, n_fil, cfg), cfg)
    if n_blob:
        _add_blobs(volume, rng, n_blob, cfg)
    return volume


# ---------------------------------------------------------------------------------- simulation


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (or nothing); yields ``advance(k)`` to report `k` finished items."""
    if not enabled:
        yield lambda _k: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k: bar.advance(task, k)


def with_overrides(config: _M, **params: Any) -> _M:
    """A validated copy of a pydantic config with some fields replaced (errors name the field)."""
    return type(config).model_validate({**config.model_dump(), **params})


def simulate_pairs(n: int, size: int | None = None, *, seed: int = 0,
                   config: SyntheticConfig | None = None, progress: bool = False,
                   **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Simulate `n` paired (confocal target, widefield input) images.

    Sample ``i`` depends only on ``(seed, i)`` and the config, so the first k pairs of a larger
    run equal a run of k pairs.

    Args:
        n: number of pairs (≥ 1).
        size: image side in pixels; None = ``config.size`` (128 by default).
        seed: random seed.
        config: the dataset parameters; None = :class:`SyntheticConfig` defaults.
        progress: show a progress bar.
        **params: any :class:`SyntheticConfig` field, overriding `config` — e.g. ``depth=32,
            structure="filaments", photons=50, read_noise=2, background=20``.

    Returns:
        ``(target, widefield)``: float32 ``(n, size, size)`` each, in camera ADU (offset
        included). The target is the noise-free confocal signal unless ``target_noise``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 pairs, got {n}")
    cfg = with_overrides(config or SyntheticConfig(), **params,
                         **({} if size is None else {"size": size}))
    shape = (cfg.depth, cfg.size, cfg.size)
    wf_psf = cfg.widefield_psf(shape, cfg.voxel_size_um)
    cf_psf = cfg.confocal_psf(shape, cfg.voxel_size_um)
    focus = [cfg.depth // 2]
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
    target = np.empty((n, cfg.size, cfg.size), dtype=np.float32)
    widefield = np.empty_like(target)
    with progress_bar(n, "synthetic pairs", progress) as advance:
        for start in range(0, n, _BATCH):
            batch = range(start, min(start + _BATCH, n))
            volumes = np.stack([render_volume(rngs[i], cfg) for i in batch])
            spectrum = fft.rfft2(volumes, workers=-1)
            wf = image_focal_planes(volumes, wf_psf, focus, volume_spectrum=spectrum)[:, 0]
            cf = image_focal_planes(volumes, cf_psf, focus, volume_spectrum=spectrum)[:, 0]
            for j, i in enumerate(batch):
                # Auto-exposure: the widefield signal averages `photons` per pixel; the target
                # shares the scale, so in-focus structure has equal brightness in both.
                scale = cfg.photons / float(wf[j].mean(dtype=np.float64))
                widefield[i] = apply_camera(np.maximum(wf[j], 0) * scale + cfg.background,
                                            cfg, rngs[i])
                target_photons = np.maximum(cf[j], 0) * scale
                target[i] = (apply_camera(target_photons, cfg, rngs[i]) if cfg.target_noise
                             else expected_camera_signal(target_photons, cfg))
            advance(len(batch))
    return target, widefield


# --------------------------------------------------------------------------------- paper layout


def split_counts(n: int, split_fractions: Sequence[float]) -> dict[str, int]:
    """Number of pairs in train/val/test: val and test rounded, train the rest.

    A split with a positive fraction gets at least one pair; train always gets at least one.
    """
    if len(split_fractions) != 3 or any(f < 0 for f in split_fractions):
        raise ValueError(f"split_fractions must be three non-negative numbers (train, val, test), "
                         f"got {tuple(split_fractions)}")
    if not math.isclose(sum(split_fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must sum to 1, got {tuple(split_fractions)} "
                         f"(sum {sum(split_fractions):.4g})")
    _, f_val, f_test = split_fractions
    n_val = max(round(n * f_val), 1 if f_val > 0 else 0)
    n_test = max(round(n * f_test), 1 if f_test > 0 else 0)
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} pairs are too few for split_fractions {tuple(split_fractions)}: "
                         f"train would get {n - n_val - n_test}; simulate more pairs or set "
                         f"the val/test fractions to 0")
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def write_pairs(folder: str | Path, target: np.ndarray, widefield: np.ndarray, *,
                split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                metadata: Mapping[str, Any] | None = None, pixel_size_um: float | None = None,
                overwrite: bool = False) -> dict[str, list[Path]]:
    """Write pairs in the paper layout: ``folder/{train,val,test}/NNNNN.tif``, CYX float32 with
    channel 0 = target (confocal), channel 1 = input (widefield).

    Splits are deterministic: the first pairs go to train, the next to val, the last to test
    (pairs are independent draws, so no shuffling is needed). Everything is written into a
    hidden temporary folder next to `folder` and renamed at the end, so an interrupted run never
    leaves a folder that looks like a complete dataset.

    Args:
        folder: destination; must not exist unless `overwrite`.
        target, widefield: ``(n, Y, X)`` arrays of equal shape.
        split_fractions: (train, val, test) fractions summing to 1.
        metadata: written as ``simulation.yaml`` in `folder` (e.g. the simulation parameters).
        pixel_size_um: lateral pixel size stored in the TIFF resolution tags.
        overwrite: replace an existing `folder` (only once the new dataset is complete).

    Returns:
        The final file paths per split.
    """
    return write_split_pairs(folder, split_pairs(target, widefield, split_fractions),
                             metadata=metadata, pixel_size_um=pixel_size_um, overwrite=overwrite)


def split_pairs(target: np.ndarray, widefield: np.ndarray, split_fractions: Sequence[float]
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``(n, Y, X)`` pairs cut in order into ``{split: (target, widefield)}`` by
    :func:`split_counts`: the first pairs are train, then val, then test."""
    target, widefield = np.asarray(target), np.asarray(widefield)
    if target.ndim != 3 or target.shape != widefield.shape:
        raise ValueError(f"target and widefield must both be (n, Y, X) with equal shapes, got "
                         f"{target.shape} and {widefield.shape}")
    counts = split_counts(len(target), split_fractions)
    bounds = np.cumsum([0] + [counts[s] for s in SPLITS])
    return {s: (target[a:b], widefield[a:b])
            for s, a, b in zip(SPLITS, bounds[:-1], bounds[1:], strict=True)}


def write_split_pairs(folder: str | Path,
                      splits: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                      metadata: Mapping[str, Any] | None = None,
                      pixel_size_um: float | None = None,
                      overwrite: bool = False) -> dict[str, list[Path]]:
    """Write pairs already assigned to splits in the paper layout (see :func:`write_pairs`).

    Files are numbered on across the splits in the order train, val, test; image sizes may
    differ between splits. Written into a hidden temporary folder and renamed at the end.

    Args:
        folder: destination; must not exist unless `overwrite`.
        splits: ``{"train" | "val" | "test": (target, widefield)}``, each ``(n, Y, X)`` of
            equal shapes; a split left out (or with n = 0) gets an empty folder.
        metadata, pixel_size_um, overwrite: as for :func:`write_pairs`.

    Returns:
        The final file paths per split.
    """
    folder = Path(folder)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected {', '.join(SPLITS)}")
    arrays = {s: tuple(np.asarray(a) for a in splits.get(s, (np.empty((0, 1, 1)),) * 2))
              for s in SPLITS}
    for split, (target, widefield) in arrays.items():
        if target.ndim != 3 or target.shape != widefield.shape:
            raise ValueError(f"{split}: target and widefield must both be (n, Y, X) with equal "
                             f"shapes, got {target.shape} and {widefield.shape}")
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists; choose a new folder or pass "
                              f"overwrite=True (--overwrite) to replace it")
    total = sum(len(t) for t, _ in arrays.values())
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(folder.parent, f".{folder.name}.", ".partial")
    width = max(5, len(str(total - 1)))
    paths: dict[str, list[Path]] = {}
    try:
        index = 0
        for split in SPLITS:
            (tmp / split).mkdir()
            paths[split] = []
            for target_img, widefield_img in zip(*arrays[split], strict=True):
                name = f"{index:0{width}d}.tif"
                pair = np.stack([target_img, widefield_img]).astype(np.float32)
                write_tiff(tmp / split / name, pair, "CYX", pixel_size_um=pixel_size_um)
                paths[split].append(folder / split / name)
                index += 1
        if metadata is not None:
            (tmp / METADATA_FILE).write_text(yaml.safe_dump(dict(metadata), sort_keys=False))
        if folder.exists():
            # Move the old dataset aside first so the final rename cannot fail half-way.
            trash = staging_dir(folder.parent, f".{folder.name}.", ".old")
            os.replace(folder, trash / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return paths
