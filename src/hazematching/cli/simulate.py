"""``hazematching simulate …``: write simulated paired datasets in the paper layout.

Three generators, each writing ``OUT/{train,val,test}/NNNNN.tif`` (CYX: channel 0 = confocal
target, channel 1 = widefield input) plus ``OUT/simulation.yaml`` with every parameter:

* ``synthetic``: fast random filaments/blobs with scalar PSFs (no extra dependency);
* ``microsim``: microsim's widefield and confocal simulations (``hazematching[simulate]``);
* ``stack``: pairs from your own 3-D fluorescence stack;
* ``real``: microsim pairs from real fluorescence images shipped with the package (nuclei,
  epithelial membranes), split into train/val/test by image region.

Options left unset take their value from ``--config`` (a YAML file of config fields) or the
config's default; the YAML records the values actually used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from pydantic import BaseModel

from hazematching.cli.common import USER_ERRORS, fail
from hazematching.config import read_yaml
from hazematching.data.real_structure import SOURCES, RealStructureConfig, simulate_real_structure
from hazematching.data.simulate import (
    MicrosimConfig,
    StackConfig,
    simulate_from_stack,
    simulate_microsim,
    stack_focal_planes,
)
from hazematching.data.synthetic import (
    METADATA_FILE,
    SyntheticConfig,
    simulate_pairs,
    split_counts,
    split_pairs,
    write_split_pairs,
)
from hazematching.io import read_image

simulate_app = typer.Typer(help="Simulate paired widefield/confocal training data (paper "
                           "layout: train/val/test folders of CYX TIFFs, channel 0 = target, "
                           "channel 1 = widefield input).", no_args_is_help=True)

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed (same seed = identical dataset).")]
SplitOpt = Annotated[str, typer.Option(help="train,val,test fractions; the first pairs go to "
                                       "train, then val, then test.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", exists=True, dir_okay=False, help="YAML file of config fields; options given "
    "on the command line override it.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace OUT if it exists (only after the new "
                                            "dataset is complete).")]
STRUCTURES = "filaments, blobs or mixed"
PHOTONS = "Mean widefield signal photons per pixel"
BACKGROUND = "Background photons per pixel"
READ_NOISE = "Read noise, electrons rms"
NA = "Numerical aperture"
PINHOLE = "Confocal pinhole diameter, Airy units"


def _field(model: type[BaseModel], name: str, text: str) -> Any:
    """A typer option for a config field, its help showing the config's default.

    The option itself defaults to None (= not given), so that --config can supply the value.
    """
    default = model.model_fields[name].default
    shown = "" if default is None else f" (default {default})"
    return typer.Option(help=f"{text}{shown}.")


class CliError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def _parse_floats(text: str, count: int, name: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise CliError(f"{name} must be {count} comma-separated numbers, got {text!r}")
    return values


def _check_out(out: Path, overwrite: bool) -> None:
    # Checked before simulating so a long run is not wasted on an existing folder.
    if out.exists() and not overwrite:
        raise CliError(f"{out} already exists; choose another --out or pass --overwrite")


def _config(model: type[BaseModel], config_file: Path | None, **options: Any) -> Any:
    """Defaults < YAML file < command-line options that were given (not None)."""
    fields: dict[str, Any] = {}
    if config_file is not None:
        loaded = read_yaml(config_file, f"{model.__name__} file")
        # A simulation.yaml from an earlier run can be reused directly.
        fields.update(loaded.get("config", loaded))
    fields.update({k: v for k, v in options.items() if v is not None})
    return model.model_validate(fields)


def _run(action: Callable[[], str]) -> None:
    """Run a command body; print its summary, or a one-line error and exit with status 2."""
    try:
        message = action()
    except (CliError, *USER_ERRORS) as err:
        fail(str(err))
    typer.echo(message)


def _write(out: Path, target: np.ndarray, widefield: np.ndarray, fractions: tuple[float, ...],
           overwrite: bool, pixel_size_um: float, metadata: dict[str, Any], started: float
           ) -> str:
    return _write_splits(out, split_pairs(target, widefield, fractions), fractions, overwrite,
                         pixel_size_um, metadata, started)


def _write_splits(out: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                  fractions: tuple[float, ...], overwrite: bool, pixel_size_um: float,
                  metadata: dict[str, Any], started: float) -> str:
    from hazematching import __version__

    counts = {split: len(target) for split, (target, _) in splits.items()}
    metadata = {"generator": metadata.pop("generator"), "hazematching_version": __version__,
                **metadata, "split_fractions": list(fractions), "splits": counts}
    write_split_pairs(out, splits, metadata=metadata, pixel_size_um=pixel_size_um,
                      overwrite=overwrite)
    sizes = dict.fromkeys(f"{t.shape[1]}×{t.shape[2]}" for t, _ in splits.values() if len(t))
    return (f"Wrote {sum(counts.values())} pairs of {' and '.join(sizes)} to {out} "
            f"(train {counts['train']}, val {counts['val']}, test {counts['test']}; parameters in "
            f"{METADATA_FILE}) in {time.perf_counter() - started:.1f} s")


@simulate_app.command()
def synthetic(
    out: OutOpt,
    n: Annotated[int, typer.Option(min=1, help="Number of pairs.")] = 200,
    size: Annotated[int | None, _field(SyntheticConfig, "size", "Image side, pixels")] = None,
    depth: Annotated[int | None, _field(SyntheticConfig, "depth", "Planes in the volume")
                     ] = None,
    seed: SeedOpt = 0,
    structure: Annotated[str | None, _field(SyntheticConfig, "structure", STRUCTURES)] = None,
    photons: Annotated[float | None, _field(SyntheticConfig, "photons", PHOTONS)] = None,
    background: Annotated[float | None, _field(SyntheticConfig, "background", BACKGROUND)
                          ] = None,
    read_noise: Annotated[float | None, _field(SyntheticConfig, "read_noise", READ_NOISE)
                          ] = None,
    na: Annotated[float | None, _field(SyntheticConfig, "na", NA)] = None,
    pinhole_au: Annotated[float | None, _field(SyntheticConfig, "pinhole_au", PINHOLE)] = None,
    config: ConfigOpt = None,
    split: SplitOpt = "0.8,0.1,0.1",
    overwrite: OverwriteOpt = False,
) -> None:
    """Fast synthetic pairs (no extra dependency; 200 pairs of 128×128 take seconds).

    Random 3-D filaments and blobs imaged with scalar widefield and confocal PSFs.
    """
    def action() -> str:
        started = time.perf_counter()
        _check_out(out, overwrite)
        fractions = _parse_floats(split, 3, "--split")
        cfg = _config(SyntheticConfig, config, size=size, depth=depth, structure=structure,
                      photons=photons, background=background, read_noise=read_noise, na=na,
                      pinhole_au=pinhole_au)
        split_counts(n, fractions)  # fail on bad splits before simulating
        target, widefield = simulate_pairs(n, seed=seed, config=cfg, progress=True)
        return _write(out, target, widefield, fractions, overwrite, cfg.pixel_size_um,
                      {"generator": "synthetic", "n": n, "seed": seed,
                       "config": cfg.model_dump(mode="json")}, started)
    _run(action)


@simulate_app.command()
def microsim(
    out: OutOpt,
    n: Annotated[int, typer.Option(min=1, help="Number of pairs.")] = 100,
    size: Annotated[int | None, _field(MicrosimConfig, "size", "Image side, pixels")] = None,
    depth: Annotated[int | None, _field(MicrosimConfig, "depth", "Ground-truth planes")] = None,
    seed: SeedOpt = 0,
    structure: Annotated[str | None, _field(MicrosimConfig, "structure", STRUCTURES)] = None,
    upsample: Annotated[int | None, _field(MicrosimConfig, "upsample",
                                           "Ground-truth voxels per pixel, laterally")] = None,
    pixel_size: Annotated[float | None, _field(MicrosimConfig, "pixel_size_um",
                                               "Pixel size, µm")] = None,
    dz: Annotated[float | None, _field(MicrosimConfig, "dz_um", "Plane spacing, µm")] = None,
    na: Annotated[float | None, _field(MicrosimConfig, "na", NA)] = None,
    pinhole_au: Annotated[float | None, _field(MicrosimConfig, "pinhole_au", PINHOLE)] = None,
    concentration: Annotated[float | None, _field(MicrosimConfig, "concentration",
                                                  "Fluorophores per labelled voxel")] = None,
    exposure_ms: Annotated[float | None, _field(MicrosimConfig, "exposure_ms", "Exposure, ms")
                           ] = None,
    read_noise: Annotated[float | None, _field(MicrosimConfig, "read_noise", READ_NOISE)
                          ] = None,
    config: ConfigOpt = None,
    split: SplitOpt = "0.8,0.1,0.1",
    overwrite: OverwriteOpt = False,
) -> None:
    """microsim pairs (needs pip install 'hazematching\\[simulate]'; ~1.6 s per pair).

    Widefield vs confocal (pinhole) images of one ground truth, same sCMOS camera.
    """
    def action() -> str:
        started = time.perf_counter()
        _check_out(out, overwrite)
        fractions = _parse_floats(split, 3, "--split")
        cfg = _config(MicrosimConfig, config, size=size, depth=depth, structure=structure,
                      upsample=upsample, pixel_size_um=pixel_size, dz_um=dz, na=na,
                      pinhole_au=pinhole_au, concentration=concentration,
                      exposure_ms=exposure_ms, read_noise=read_noise)
        split_counts(n, fractions)
        target, widefield = simulate_microsim(n, seed=seed, config=cfg, progress=True)
        return _write(out, target, widefield, fractions, overwrite, cfg.pixel_size_um,
                      {"generator": "microsim", "n": n, "seed": seed,
                       "config": cfg.model_dump(mode="json")}, started)
    _run(action)


@simulate_app.command()
def stack(
    stack_file: Annotated[Path, typer.Argument(metavar="STACK", exists=True, dir_okay=False,
                                               help="3-D fluorescence stack (TIFF, ZYX).")],
    out: OutOpt,
    voxel_size: Annotated[str | None, typer.Option(help="dz,dy,dx in µm (required), e.g. "
                                                   "0.2,0.1,0.1.")] = None,
    axes: Annotated[str | None, typer.Option(help="Axes of the file if its metadata is "
                                             "missing or wrong, e.g. ZYX.")] = None,
    seed: SeedOpt = 0,
    target: Annotated[str | None, _field(StackConfig, "target", "plane (the stack's own plane) "
                                         "or confocal (its simulated confocal image)")] = None,
    n_planes: Annotated[int | None, _field(StackConfig, "n_planes", "Focal planes to use, "
                                           "evenly spread; unset = every usable plane")] = None,
    min_defocus: Annotated[float | None, _field(StackConfig, "min_defocus_um", "µm of sample "
                                                "needed above and below a focal plane")] = None,
    na: Annotated[float | None, _field(StackConfig, "na", NA)] = None,
    wavelength: Annotated[float | None, _field(StackConfig, "emission_wavelength_um",
                                               "Emission wavelength, µm")] = None,
    refractive_index: Annotated[float | None, _field(StackConfig, "refractive_index",
                                                     "Refractive index")] = None,
    photons: Annotated[float | None, _field(StackConfig, "photons", PHOTONS)] = None,
    background: Annotated[float | None, _field(StackConfig, "background", BACKGROUND)] = None,
    read_noise: Annotated[float | None, _field(StackConfig, "read_noise", READ_NOISE)] = None,
    config: ConfigOpt = None,
    split: SplitOpt = "0.8,0.1,0.1",
    overwrite: OverwriteOpt = False,
) -> None:
    """Pairs from your own z-stack: each usable plane vs its simulated hazy widefield image."""
    def action() -> str:
        started = time.perf_counter()
        _check_out(out, overwrite)
        fractions = _parse_floats(split, 3, "--split")
        if voxel_size is None:
            raise CliError("--voxel-size is required: dz,dy,dx in µm (e.g. 0.2,0.1,0.1); the "
                           "PSF, and so the haze, depends on it")
        voxel = _parse_floats(voxel_size, 3, "--voxel-size")
        cfg = _config(StackConfig, config, target=target, n_planes=n_planes,
                      min_defocus_um=min_defocus, na=na, emission_wavelength_um=wavelength,
                      refractive_index=refractive_index, photons=photons,
                      background=background, read_noise=read_noise)
        array, file_axes = read_image(stack_file, axes)
        if file_axes != "ZYX":
            raise CliError(f"{stack_file}: axes {file_axes} (shape {array.shape}); expected a "
                           f"single-channel z-stack (ZYX): a single plane has no out-of-focus "
                           f"structure to make haze. If the first axis is depth, pass --axes ZYX")
        planes = stack_focal_planes(array.shape[0], voxel[0], cfg)  # fails early if too shallow
        split_counts(len(planes), fractions)
        target_img, widefield = simulate_from_stack(array, voxel, seed=seed, config=cfg,
                                                    progress=True)
        return _write(out, target_img, widefield, fractions, overwrite, voxel[2],
                      {"generator": "stack", "source": str(stack_file),
                       "voxel_size_um": list(voxel), "focal_planes": planes.tolist(),
                       "seed": seed, "config": cfg.model_dump(mode="json")}, started)
    _run(action)


@simulate_app.command()
def real(
    out: OutOpt,
    n: Annotated[int, typer.Option(min=1, help="Number of pairs (split by --split).")] = 160,
    sources: Annotated[str | None, typer.Option(help="Comma-separated structures, taken in turn: "
                                         "nuclei (2-D, BBBC038v1), membranes (3-D, EpiTools)"
                                         " (default: both).")] = None,
    size: Annotated[int | None, _field(RealStructureConfig, "size", "Side of the training "
                                       "images, pixels")] = None,
    eval_size: Annotated[int | None, _field(RealStructureConfig, "eval_size", "Side of the "
                                            "validation and test images, pixels")] = None,
    depth: Annotated[int | None, _field(RealStructureConfig, "depth", "Ground-truth planes")
                     ] = None,
    seed: SeedOpt = 0,
    thickness: Annotated[float | None, _field(RealStructureConfig, "thickness_um", "Depth of "
                                              "the sample made from a 2-D image, µm")] = None,
    margin: Annotated[int | None, _field(RealStructureConfig, "margin", "Context pixels imaged "
                                         "around each image and cut away")] = None,
    upsample: Annotated[int | None, _field(RealStructureConfig, "upsample",
                                           "Ground-truth voxels per pixel, laterally")] = None,
    pixel_size: Annotated[float | None, _field(RealStructureConfig, "pixel_size_um",
                                               "Pixel size, µm")] = None,
    dz: Annotated[float | None, _field(RealStructureConfig, "dz_um", "Plane spacing, µm")
                  ] = None,
    na: Annotated[float | None, _field(RealStructureConfig, "na", NA)] = None,
    pinhole_au: Annotated[float | None, _field(RealStructureConfig, "pinhole_au", PINHOLE)
                          ] = None,
    concentration: Annotated[float | None, _field(RealStructureConfig, "concentration",
                                                  "Mean fluorophores per voxel column "
                                                  "(exposure)")] = None,
    read_noise: Annotated[float | None, _field(RealStructureConfig, "read_noise", READ_NOISE)
                          ] = None,
    config: ConfigOpt = None,
    split: Annotated[str, typer.Option(help="train,val,test fractions of the pairs and of each "
                                       "image's area: val and test are squares in its "
                                       "right-hand corners, train the rest.")] = "0.7,0.15,0.15",
    overwrite: OverwriteOpt = False,
) -> None:
    """microsim pairs from real fluorescence structure, split by region (needs
    pip install 'hazematching\\[simulate]'; a few s per pair).

    Crops of real images (shipped with hazematching, openly licensed) become the ground truth;
    no crop of one split overlaps another split's region.
    """
    def action() -> str:
        started = time.perf_counter()
        _check_out(out, overwrite)
        fractions = _parse_floats(split, 3, "--split")
        cfg = _config(RealStructureConfig, config,
                      sources=None if sources is None else [
                          s.strip() for s in sources.split(",") if s.strip()], size=size,
                      eval_size=eval_size, depth=depth, thickness_um=thickness, margin=margin,
                      upsample=upsample, pixel_size_um=pixel_size, dz_um=dz, na=na,
                      pinhole_au=pinhole_au, concentration=concentration,
                      read_noise=read_noise)
        split_counts(n, fractions)
        pairs = simulate_real_structure(n, seed=seed, config=cfg, split_fractions=fractions,
                                        progress=True)
        return _write_splits(
            out, pairs.splits, fractions, overwrite, cfg.pixel_size_um,
            {"generator": "real", "n": n, "seed": seed, "config": cfg.model_dump(mode="json"),
             "sources": {name: {"file": SOURCES[name].file, "shows": SOURCES[name].description,
                                "voxel_um": list(SOURCES[name].voxel_um),
                                "licence": SOURCES[name].licence,
                                "credit": SOURCES[name].credit} for name in cfg.sources},
             "crops": pairs.crops}, started)
    _run(action)
