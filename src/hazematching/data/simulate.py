"""Paired widefield/confocal images from microsim, and from a user's own 3-D stack.

* :func:`microsim_images` images ground-truth volumes with microsim's ``Widefield`` and
  ``Confocal`` modalities (vectorial PSFs), records both with the same sCMOS camera model and
  returns the central plane of each; :func:`simulate_microsim` feeds it random volumes
  (microsim's ``MatsLines`` filaments and/or blobs), :mod:`.real_structure` real fluorescence
  images. microsim is an optional dependency (``pip install 'hazematching[simulate]'``).
* :func:`simulate_from_stack` turns any fluorescence z-stack into pairs with the scalar PSFs of
  :mod:`.psf`: the widefield input of a plane is the whole stack convolved with the widefield PSF
  (out-of-focus planes become haze) plus camera noise; the target is the plane itself or its
  confocal image.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from scipy import fft

from hazematching.data.psf import OpticsConfig, defocus_blur_radius_um, image_focal_planes
from hazematching.data.synthetic import (
    CameraConfig,
    Structure,
    SyntheticConfig,
    apply_camera,
    expected_camera_signal,
    progress_bar,
    render_volume,
    with_overrides,
)

INSTALL_HINT = "pip install 'hazematching[simulate]'"


# ------------------------------------------------------------------------------------ microsim


class MicrosimOptics(CameraConfig):
    """How microsim images a ground truth: its grid, the objective, pinhole, camera, exposure.

    The ground truth is rendered ``upsample`` times finer laterally than the camera pixels and
    summed into them (pixel integration); its planes are ``dz_um`` apart and the image is the
    central plane. The photon budget is ``concentration`` (fluorophores per labelled voxel) ×
    ``exposure_ms``.
    """

    size: int = Field(128, ge=16, description="Side of the output images, camera pixels.")
    depth: int = Field(32, ge=3, description="Planes of the ground-truth volume; its depth is "
                       "what produces widefield haze (the PSF spans the whole volume).")
    upsample: int = Field(2, ge=1, le=8, description="Ground-truth voxels per camera pixel, "
                          "laterally. 4 is more faithful, ~4× slower than 2.")
    pixel_size_um: float = Field(0.1, gt=0.0, description="Camera pixel size in the sample, µm.")
    dz_um: float = Field(0.2, gt=0.0, description="Plane spacing of the ground truth, µm.")
    na: float = Field(1.4, gt=0.0, description="Numerical aperture.")
    immersion_ri: float = Field(1.515, ge=1.0, description="Immersion medium refractive index.")
    specimen_ri: float = Field(1.47, ge=1.0, description="Specimen refractive index (a mismatch "
                               "adds depth aberrations in microsim's vectorial PSF).")
    pinhole_au: float = Field(1.0, ge=0.0, description="Confocal pinhole diameter, Airy units.")
    concentration: float = Field(1000.0, gt=0.0, description="Fluorophores per labelled "
                                 "ground-truth voxel (brightness).")
    exposure_ms: float = Field(100.0, gt=0.0, description="Exposure time, ms.")

    @model_validator(mode="after")
    def _na_below_index(self) -> MicrosimOptics:
        if self.na >= self.immersion_ri:
            raise ValueError(f"na={self.na} must be smaller than immersion_ri="
                             f"{self.immersion_ri}")
        return self


class MicrosimConfig(MicrosimOptics):
    """Parameters of a microsim dataset of random filaments and blobs (everything but the number
    of pairs and the seed); the defaults give ~100 signal photons per widefield pixel."""

    structure: Structure = Field("mixed", description="'filaments' (microsim MatsLines), "
                                 "'blobs' (filled spheres and vesicles) or 'mixed'.")
    line_density: float = Field(1.0, gt=0.0, description="MatsLines density: lines per "
                                "ground-truth pixel of image width.")
    line_length: int = Field(10, ge=1, description="MatsLines length parameter (longest line "
                             "~ (1 + line_length) / 20 of the image width).")
    line_azimuth: int = Field(20, ge=1, description="MatsLines azimuth: lines tilt out of the "
                              "image plane by up to 180°/azimuth in voxel units (steeper in µm "
                              "when dz_um > pixel_size_um / upsample).")
    blob_density: float = Field(60.0, ge=0.0, description="Blobs per 1000 µm³.")
    in_focus_fraction: float = Field(0.3, ge=0.0, le=1.0, description="Fraction of blobs at "
                                     "the focal plane.")


@contextlib.contextmanager
def _microsim_environment() -> Iterator[None]:
    """Keep microsim offline and quiet while it runs, then restore the process state.

    MICROSIM_CACHE=0 stops it writing PSFs to ~/.cache/microsim (Settings(cache=False) covers
    only ground truths). Its MatsLines and camera draw from numpy's global generator, whose
    state is restored afterwards.
    """
    saved_cache = os.environ.get("MICROSIM_CACHE")
    saved_random = np.random.get_state()
    os.environ["MICROSIM_CACHE"] = "0"
    try:
        yield
    finally:
        np.random.set_state(saved_random)
        if saved_cache is None:
            os.environ.pop("MICROSIM_CACHE", None)
        else:
            os.environ["MICROSIM_CACHE"] = saved_cache


@contextlib.contextmanager
def _quiet_stderr(enabled: bool) -> Iterator[None]:
    """Swallow stderr while microsim builds its PSFs (first pair only; they are cached after).

    microsim draws a tqdm bar per confocal PSF; tqdm reads TQDM_DISABLE only when imported, so
    redirecting is the only way to keep the console clean. Errors still raise normally.
    """
    if not enabled:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _import_microsim() -> SimpleNamespace:
    """Import the parts of microsim used here, or explain how to install it."""
    root = logging.getLogger()
    # microsim calls logging.basicConfig() on import, which would route every library's INFO
    # messages to the console; with a handler already on the root logger that call does nothing.
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        from microsim import Simulation
        from microsim.schema.detectors import CameraCMOS
        from microsim.schema.lens import ObjectiveLens
        from microsim.schema.modality import Confocal, Widefield
        from microsim.schema.sample import MatsLines
        from microsim.schema.settings import Settings
        from microsim.schema.space import DownscaledSpace, ShapeScaleSpace
    except ImportError as err:
        raise ImportError(f"simulate_microsim needs microsim, which is not installed or failed "
                          f"to import ({err}); install it with: {INSTALL_HINT}") from err
    finally:
        root.removeHandler(guard)
    logging.getLogger("microsim").setLevel(logging.WARNING)
    return SimpleNamespace(Simulation=Simulation, CameraCMOS=CameraCMOS,
                           ObjectiveLens=ObjectiveLens, Confocal=Confocal, Widefield=Widefield,
                           MatsLines=MatsLines, Settings=Settings,
                           DownscaledSpace=DownscaledSpace, ShapeScaleSpace=ShapeScaleSpace)


def _microsim_truth(ms: SimpleNamespace, cfg: MicrosimConfig, seed: int) -> np.ndarray:
    """Ground truth ``(depth, size·upsample, size·upsample)`` float32, fluorophores per voxel.

    Lines come from numpy's global generator (seeded by the caller), blobs from `seed`.
    """
    fine = cfg.size * cfg.upsample
    space = ms.ShapeScaleSpace(shape=(cfg.depth, fine, fine),
                               scale=(cfg.dz_um, cfg.pixel_size_um / cfg.upsample,
                                      cfg.pixel_size_um / cfg.upsample))
    truth = np.zeros(space.shape, dtype=np.float32)
    if cfg.structure in ("filaments", "mixed"):
        # max_r=2 lets lines fill the whole box (MatsLines' default 0.9 confines them to a
        # centred ellipsoid).
        lines = ms.MatsLines(density=cfg.line_density, length=cfg.line_length,
                             azimuth=cfg.line_azimuth, max_r=2.0)
        truth += np.asarray(lines.render(space.create())).astype(np.float32)
    if cfg.structure in ("blobs", "mixed"):
        blobs = SyntheticConfig(size=fine, depth=cfg.depth, dz_um=cfg.dz_um,
                                pixel_size_um=cfg.pixel_size_um / cfg.upsample,
                                structure="blobs", blob_density=cfg.blob_density,
                                in_focus_fraction=cfg.in_focus_fraction)
        # A blob fills ~upsample² fine voxels per camera pixel where a one-voxel line crosses only
        # ~upsample: dividing keeps their relative brightness independent of `upsample`.
        truth += render_volume(np.random.default_rng(seed), blobs) / cfg.upsample
    return truth * cfg.concentration


#: Ground truth of pair ``i`` from its seed: ``truth(i, seed)`` → float32
#: ``(depth, side·upsample, side·upsample)`` fluorophores per voxel (see :func:`microsim_images`).
TruthFn = Callable[[int, int], np.ndarray]


def simulate_microsim(n: int, size: int | None = None, *, seed: int = 0,
                      config: MicrosimConfig | None = None, progress: bool = False,
                      **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Simulate `n` (confocal target, widefield input) pairs of random filaments and blobs.

    The imaging is :func:`microsim_images`; this draws the ground truths (microsim's
    ``MatsLines`` filaments and/or blobs, see :class:`MicrosimConfig`).

    Args:
        n: number of pairs (≥ 1).
        size: output side in pixels; None = ``config.size`` (128).
        seed: random seed.
        config: parameters; None = :class:`MicrosimConfig` defaults.
        progress: show a progress bar.
        **params: any :class:`MicrosimConfig` field, overriding `config`.

    Returns and raises as :func:`microsim_images`: ``(target, widefield)``, float32
    ``(n, size, size)`` each in camera ADU.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 pairs, got {n}")
    cfg = with_overrides(config or MicrosimConfig(), **({} if size is None else {"size": size}),
                         **params)
    ms = _import_microsim()
    return microsim_images(n, lambda _i, pair_seed: _microsim_truth(ms, cfg, pair_seed),
                           seed=seed, config=cfg, progress=progress)


def microsim_images(n: int, truth: TruthFn, *, seed: int, config: MicrosimOptics,
                    margin: int = 0, progress: bool = False,
                    description: str = "microsim pairs") -> tuple[np.ndarray, np.ndarray]:
    """Image `n` ground truths with microsim: a confocal target and a widefield input each.

    Both images of a pair share one ground truth and one camera model (CMOS: QE, offset, read
    noise, shot noise, 16-bit ADC with ``gain`` ADU per electron); each has its own noise. Pair
    ``i`` depends only on ``(seed, i)``, `truth` and the config. Runs offline: a built-in
    broadband fluorophore and microsim's FITC filter set (emission ~525 nm), nothing fetched,
    nothing cached on disk.

    Args:
        n: number of pairs (≥ 1).
        truth: ``truth(i, pair_seed)`` → float32 ``(config.depth, (config.size + 2·margin)·
            config.upsample, same)`` fluorophores per voxel, voxels of ``(dz_um,
            pixel_size_um / upsample, pixel_size_um / upsample)``; the focal plane is its plane
            ``depth // 2``. numpy's global generator is seeded with `pair_seed` before the call.
        seed: random seed.
        config: the grid, optics and camera.
        margin: camera pixels of context imaged around every output image and cut away: their
            structure sends light into the image as it does in a larger field of view, where
            the simulation's edges would otherwise be dark (microsim's convolution is linear).
        progress: show a progress bar labelled `description`.

    Returns:
        ``(target, widefield)``: float32 ``(n, size, size)`` each, camera ADU, the central plane
        of the confocal and of the widefield simulation.

    Raises:
        ImportError: microsim is not installed (install with ``pip install
            'hazematching[simulate]'``).
        ValueError: `truth` returned a volume of another shape.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 pairs, got {n}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 camera pixels, got {margin}")
    cfg = config
    ms = _import_microsim()
    objective = ms.ObjectiveLens(numerical_aperture=cfg.na, immersion_medium_ri=cfg.immersion_ri,
                                 immersion_medium_ri_spec=cfg.immersion_ri,
                                 specimen_ri=cfg.specimen_ri)
    camera = ms.CameraCMOS(qe=cfg.qe, read_noise=cfg.read_noise, offset=round(cfg.offset),
                           bit_depth=16, full_well=max(1, round(65535 / cfg.gain)), gain=1.0)
    scale = (cfg.dz_um, cfg.pixel_size_um / cfg.upsample, cfg.pixel_size_um / cfg.upsample)
    # random_seed=None: microsim then neither reseeds numpy per call nor keys its in-memory PSF
    # cache on the seed, so the two PSFs are computed once and reused for every pair.
    settings = ms.Settings(random_seed=None, cache=False, np_backend="numpy")
    modalities = (ms.Confocal(pinhole_au=cfg.pinhole_au), ms.Widefield())
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]
    fine = (cfg.size + 2 * margin) * cfg.upsample
    crop = (slice(margin, margin + cfg.size),) * 2
    target = np.empty((n, cfg.size, cfg.size), dtype=np.float32)
    widefield = np.empty_like(target)
    with _microsim_environment(), progress_bar(n, description, progress) as advance:
        for i, pair_seed in enumerate(seeds):
            # MatsLines and microsim's camera draw from numpy's global generator: seeding it
            # per pair makes pair i depend only on (seed, i).
            np.random.seed(pair_seed)
            volume = truth(i, pair_seed)
            if volume.shape != (cfg.depth, fine, fine):
                raise ValueError(f"ground truth {i} has shape {volume.shape}; expected "
                                 f"{(cfg.depth, fine, fine)} (depth, (size + 2·margin)·upsample "
                                 f"twice)")
            for out, modality in zip((target, widefield), modalities, strict=True):
                sim = ms.Simulation.from_ground_truth(
                    volume, scale=scale, output_space=ms.DownscaledSpace(
                        downscale=(1, cfg.upsample, cfg.upsample)),
                    modality=modality, objective_lens=objective, detector=camera,
                    settings=settings, exposure_ms=cfg.exposure_ms)
                with _quiet_stderr(enabled=i == 0):
                    image = np.asarray(sim.digital_image())  # (C, Z, Y, X) uint16 ADU
                out[i] = image[0, cfg.depth // 2][crop]
            advance(1)
    return target, widefield


# --------------------------------------------------------------------------------- from stacks


class StackConfig(OpticsConfig, CameraConfig):
    """How a user's z-stack becomes pairs: optics of the simulated widefield, camera, targets."""

    min_defocus_um: float = Field(1.0, gt=0.0, description="Sample depth needed above AND below "
                                  "a focal plane for it to be used: haze is light from beyond "
                                  "the depth of field (~0.5 µm at NA 1.4), so a plane needs "
                                  "structure at least ~1 µm away on both sides.")
    n_planes: int | None = Field(None, ge=1, description="Focal planes to output, evenly spread "
                                 "over the usable ones; None = every usable plane.")
    photons: float = Field(100.0, gt=0.0, description="Mean signal photons per pixel of the "
                           "noise-free widefield images (one scale for the whole stack).")
    background: float = Field(10.0, ge=0.0, description="Uniform background photons per pixel "
                              "added to the widefield images.")
    target: Literal["plane", "confocal"] = Field(
        "plane", description="'plane': the stack's own focal plane (use for confocal, "
        "deconvolved or super-resolved stacks); 'confocal': its simulated confocal image.")
    target_noise: bool = Field(False, description="Record the target with camera noise too.")
    pad: int | None = Field(None, ge=0, description="Lateral mirror padding in pixels against "
                            "wrap-around; None = the defocus blur radius, at most half the "
                            "image.")


def stack_focal_planes(n_z: int, dz_um: float, config: StackConfig) -> np.ndarray:
    """Indices of the planes of an ``n_z``-plane stack that can be focal planes.

    A plane qualifies when the stack extends ``min_defocus_um`` beyond it on both sides; so the
    stack needs at least ``2·ceil(min_defocus_um / dz) + 1`` planes.

    Raises:
        ValueError: the stack is too shallow, with the minimum number of planes.
    """
    margin = math.ceil(config.min_defocus_um / dz_um - 1e-9)
    minimum = 2 * margin + 1
    if n_z < minimum:
        raise ValueError(
            f"the stack has {n_z} planes × {dz_um} µm = {n_z * dz_um:.3g} µm of depth; widefield "
            f"haze needs {config.min_defocus_um} µm of sample above and below the focal plane "
            f"(min_defocus_um), i.e. at least {minimum} planes at dz = {dz_um} µm. Use a deeper "
            f"stack or lower min_defocus_um (haze will then be weaker).")
    usable = np.arange(margin, n_z - margin)
    if config.n_planes is None or config.n_planes >= len(usable):
        return usable
    return np.unique(np.rint(np.linspace(usable[0], usable[-1], config.n_planes)).astype(int))


def _check_stack(stack: np.ndarray, voxel_size_um: Sequence[float] | None
                 ) -> tuple[float, float, float]:
    if stack.ndim != 3:
        shape_hint = ("a single 2-D plane has no out-of-focus structure to turn into haze; "
                      "pass the whole z-stack" if stack.ndim == 2 else "pass one channel and "
                      "time point")
        raise ValueError(f"stack must be 3-D (Z, Y, X), got shape {stack.shape}: {shape_hint}")
    if voxel_size_um is None:
        raise ValueError("voxel_size_um is required: (dz, dy, dx) in µm, from the microscope "
                         "metadata; the PSF (and so the haze) depends on it")
    if len(voxel_size_um) != 3 or not all(float(v) > 0 for v in voxel_size_um):
        raise ValueError(f"voxel_size_um must be three positive sizes (dz, dy, dx) in µm, got "
                         f"{tuple(voxel_size_um)}")
    if not np.isfinite(stack).all():
        raise ValueError("stack contains NaN or Inf values; clean it first")
    dz, dy, dx = (float(v) for v in voxel_size_um)
    return dz, dy, dx


def simulate_from_stack(stack: np.ndarray, voxel_size_um: Sequence[float] | None, *,
                        seed: int = 0, config: StackConfig | None = None,
                        progress: bool = False, **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pairs from a 3-D fluorescence stack: hazy widefield input vs the in-focus plane.

    The stack is taken as emitter density (subtract any camera offset first; negative values
    count as 0). For each usable focal plane ``f`` (see :func:`stack_focal_planes`) the
    widefield input is ``Σ_z stack[z] ⊛ PSF_wf(z − f)`` — the full 3-D convolution at plane f,
    laterally mirror-padded — scaled to ``photons`` and recorded with the camera model.

    Args:
        stack: ``(Z, Y, X)`` array, any real dtype.
        voxel_size_um: ``(dz, dy, dx)`` in µm (required).
        seed: random seed of the camera noise.
        config: parameters; None = :class:`StackConfig` defaults.
        progress: show a progress bar.
        **params: any :class:`StackConfig` field, overriding `config`.

    Returns:
        ``(target, widefield)``: float32 ``(n_planes, Y, X)`` each, camera ADU.

    Raises:
        ValueError: not 3-D, voxel size missing or invalid, too few planes, non-finite values.
    """
    stack = np.asarray(stack)
    dz, dy, dx = _check_stack(stack, voxel_size_um)
    cfg = with_overrides(config or StackConfig(), **params)
    n_z, ny, nx = stack.shape
    focus = stack_focal_planes(n_z, dz, cfg)
    max_planes = max(int(focus[-1]), n_z - 1 - int(focus[0]))  # largest |z − f| that occurs
    blur_um = defocus_blur_radius_um(max_planes * dz, cfg.na, cfg.refractive_index)
    blur_px = blur_um / min(dy, dx)
    pad = cfg.pad if cfg.pad is not None else min(math.ceil(blur_px), max(ny, nx) // 2)
    volume = np.pad(np.clip(stack.astype(np.float32), 0.0, None),
                    ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    psf_shape = (2 * max_planes + 1, *volume.shape[1:])
    psfs = [cfg.widefield_psf(psf_shape, (dz, dy, dx))]
    if cfg.target == "confocal":
        psfs.append(cfg.confocal_psf(psf_shape, (dz, dy, dx)))
    spectrum = fft.rfft2(volume, workers=-1)
    crop = (slice(None), slice(pad, pad + ny), slice(pad, pad + nx))
    images = []
    with progress_bar(len(psfs), "imaging stack", progress) as advance:
        for psf in psfs:
            images.append(image_focal_planes(volume, psf, focus.tolist(),
                                             volume_spectrum=spectrum)[crop])
            advance(1)
    wf_clean = np.maximum(images[0], 0.0)
    mean = float(wf_clean.mean(dtype=np.float64))
    if mean <= 0:
        raise ValueError("the stack is empty (all values <= 0); nothing to image")
    scale = cfg.photons / mean
    rng = np.random.default_rng(seed)
    widefield = apply_camera(wf_clean * scale + cfg.background, cfg, rng)
    target_photons = scale * (np.maximum(images[1], 0.0) if cfg.target == "confocal"
                              else np.clip(stack[focus].astype(np.float32), 0.0, None))
    target = (apply_camera(target_photons, cfg, rng) if cfg.target_noise
              else expected_camera_signal(target_photons, cfg))
    return target, widefield
