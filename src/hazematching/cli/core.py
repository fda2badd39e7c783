"""Train, predict, calibrate, write a config, run the demo: the core commands."""

from __future__ import annotations

import glob
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from hazematching.cli.common import (
    USER_ERRORS,
    AcceleratorOption,
    DevicesOption,
    EpochsOption,
    MaxMinutesOption,
    MaxStepsOption,
    ResumeOption,
    ValOption,
    console,
    fail,
    say,
)
from hazematching.config import ModelConfig, preset_overrides


def _parse_sets(sets: list[str]) -> dict[str, Any]:
    out = {}
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE (e.g. training.epochs=50), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _parse_devices(devices: str | None) -> int | str | None:
    """``--devices``: a count ("2") as an int; 'auto' or a GPU list ("0,2") as Lightning reads
    them."""
    return None if devices is None else (int(devices) if devices.isdigit() else devices)


def _expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, OME-Zarr folders, folders (their visible TIFF files and OME-Zarr folders) and
    glob patterns → images, each checked."""
    from hazematching.io import (
        TIFF_SUFFIXES,
        ZARR_SUFFIX,
        ImageError,
        image_files,
        is_image_file,
        is_zarr_path,
    )

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if is_zarr_path(p):
            found = [p]
        elif p.is_dir():
            found = image_files(p)
            if not found:
                raise ImageError(f"{p}: contains no TIFF files ({', '.join(TIFF_SUFFIXES)}) or "
                                 f"OME-Zarr folders ({ZARR_SUFFIX})")
        elif p.is_file():
            found = [p]
        elif any(c in item for c in "*?["):
            found = [f for f in map(Path, sorted(glob.glob(item))) if is_image_file(f)]
            if not found:
                raise ImageError(f"{item}: the pattern matches no TIFF file or OME-Zarr folder")
        else:
            raise ImageError(f"{p}: no such file or folder")
        files += found
    return files


def _output_target(out: Path, output_format: str | None, files: list[Path]
                   ) -> tuple[str, Path, str | None]:
    """(format, output folder, output stem) from --out and --format. An --out ending in
    .ome.zarr names the OME-Zarr outputs of one input: OUT_mmse.ome.zarr, … beside it."""
    if output_format not in (None, "tiff", "zarr"):
        raise ValueError(f"--format must be tiff or zarr, got {output_format!r}")
    if not out.name.lower().endswith(".ome.zarr"):
        return output_format or "tiff", out, None
    if output_format == "tiff":
        raise ValueError(f"--out {out} is an OME-Zarr path but --format tiff was given; drop "
                         f"one of them")
    if len(files) != 1:
        raise ValueError(f"--out {out}: an .ome.zarr output path names the outputs of one "
                         f"image, but {len(files)} inputs were given; give an output folder "
                         f"and --format zarr instead")
    return "zarr", out.parent, out.name[:-len(".ome.zarr")]


def train(
    data: Annotated[Path, typer.Argument(help="Training folder or dataset root (train/ + val/, "
                                              "train_crop/ + val_crop/, or input/ + target/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    config: Annotated[Path | None, typer.Option(help="YAML config (see `hazematching config`).")
                      ] = None,
    val: ValOption = None,
    method: Annotated[str | None, typer.Option(help="Restoration method (listed above; "
                                                    "default hazematching).")] = None,
    epochs: EpochsOption = None,
    max_steps: MaxStepsOption = None,
    max_minutes: MaxMinutesOption = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    patch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    accelerator: AcceleratorOption = None,
    devices: DevicesOption = None,
    strategy: Annotated[str | None, typer.Option(help="auto, ddp, ….")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Any config field, e.g. "
                                            "--set network.model_channels=64.")] = [],  # noqa: B006
    resume: ResumeOption = True,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished model in OUT by a new "
                                                 "training run.")] = False,
    calibrate: Annotated[bool | None, typer.Option(
        help="Fit the std calibration on the validation images after training (default: on "
             "for sampling methods).")] = None,
) -> None:
    """Train a model on paired widefield/confocal images."""
    from hazematching.api import Model

    try:
        cfg = ModelConfig.from_yaml(config) if config else ModelConfig()
        dev = _parse_devices(devices)
        cfg = cfg.with_overrides({
            "method": method, "training.epochs": epochs, "training.max_steps": max_steps,
            "training.max_minutes": max_minutes, "training.batch_size": batch_size,
            "data.patch_size": patch_size,
            "training.lr": lr, "training.accelerator": accelerator, "training.devices": dev,
            "training.strategy": strategy, "training.calibrate": calibrate,
            **_parse_sets(set_)}, source="command-line options")
        model = Model(cfg).fit(data, val, out_dir=out, resume=resume, overwrite=overwrite)
    except USER_ERRORS as err:
        fail(str(err))
    if model.path is not None:
        _say_calibration(model)
        say(f"model written to {model.path}")


def _method_list() -> str:
    """The paragraph of `train --help` that lists every method with its one-line description."""
    from hazematching.methods import method_summaries

    rows = method_summaries()
    width = max(map(len, rows))
    # "\b" keeps Click from re-wrapping the table into one paragraph.
    return "\n".join(["\b", "Methods (--method NAME; options: --set method_options.FIELD=VALUE)",
                      *(f"  {name:<{width}}  {text}" for name, text in rows.items())])


train.__doc__ = f"{train.__doc__}\n\n{_method_list()}"


def predict(
    model: Annotated[Path, typer.Argument(help="Model directory or .zip archive.")],
    inputs: Annotated[list[str], typer.Argument(help="TIFF files, OME-Zarr folders (.zarr), "
                                                     "folders or glob patterns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "Output folder; or, for one input, an OME-Zarr path OUT.ome.zarr: the outputs are "
        "then OUT_mmse.ome.zarr, OUT_std.ome.zarr, … beside it."))],
    axes: Annotated[str | None, typer.Option(help="Axes of the inputs, e.g. YX, ZYX, TYX, "
                                                  "SYX (default: from the file).")] = None,
    channel: Annotated[list[int] | None, typer.Option(
        help="Input channel(s) of multi-channel files, e.g. --channel 1 for the widefield "
             "channel of paper-layout pairs (default: all).")] = None,
    n_samples: Annotated[int | None, typer.Option(help="Posterior samples per image.")] = None,
    save_samples: Annotated[bool, typer.Option(help="Also write the samples.")] = False,
    preset: Annotated[str | None, typer.Option(
        help="Named sampling settings: 'default' (50 samples, midpoint rule 9 steps "
             "= 18 calls, 256-px tiles), "
             "'fast' (8 antithetic samples, 6 Euler steps: ~70-80x faster, a less well "
             "calibrated std), 'balanced' (16 antithetic samples, 2 midpoint steps = 4 calls: "
             "~50x faster, the published quality on a well-trained model) or 'paper' (the "
             "published "
             "inference: 50 samples, 19 Euler "
             "steps, 128-px tiles keeping 64); the options below override it.")] = None,
    solver: Annotated[str | None, typer.Option(help="euler, heun or midpoint.")] = None,
    n_time_points: Annotated[int | None, typer.Option(help="ODE grid points.")] = None,
    schedule: Annotated[str | None, typer.Option(help="Time grid: uniform or late.")] = None,
    mmse: Annotated[str | None, typer.Option(
        help="t0 (mean of one-call estimates) or samples (mean of the samples).")] = None,
    tile_size: Annotated[int | None, typer.Option()] = None,
    tile_overlap: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option(help="Network batch size.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ….")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    output_format: Annotated[str | None, typer.Option(
        "--format", help="tiff (ImageJ TIFFs, the default) or zarr (OME-Zarr, NGFF 0.4, "
                         "chunked 256×256 per plane); both keep the input's axes and pixel "
                         "sizes.")] = None,
    devices: Annotated[str | None, typer.Option(
        help="Spread the files over this many processes per machine (one per GPU, or CPU "
             "processes with --accelerator cpu), started by Lightning as for training; under "
             "torchrun or srun: the processes per node they start.")] = None,
    num_nodes: Annotated[int, typer.Option(help="Machines taking part (with --devices).")] = 1,
    strategy: Annotated[str, typer.Option(help="With --devices: auto or ddp.")] = "auto",
    accelerator: Annotated[str, typer.Option(help="With --devices: auto, cpu or gpu.")
                           ] = "auto",
) -> None:
    """Dehaze images: write <name>_mmse.tif, <name>_std.tif (and <name>_samples.tif), or
    .ome.zarr with --format zarr.

    Images of any size are streamed: read and written a band of tiles at a time. Re-running
    after an interruption skips the images whose outputs are complete. With
    --devices the files are shared out among processes, each writing whole files; with
    --format zarr, the planes of each stack are shared out instead (same outputs to the bit).
    """
    from hazematching.api import CalibrationMismatch, check_device, check_n_samples, load_model
    from hazematching.distributed import RankFailedError, this_process

    try:
        check_device(device)
        check_n_samples(n_samples)
        files = _expand_inputs(inputs)
        fmt, out_dir, stem = _output_target(out, output_format, files)
        m = load_model(model)
        m.reconfigure({**(preset_overrides(preset) if preset else {}),
                       "sampling.solver": solver, "sampling.n_time_points": n_time_points,
                       "sampling.schedule": schedule, "sampling.mmse": mmse,
                       "sampling.tile_size": tile_size, "sampling.tile_overlap": tile_overlap,
                       "sampling.batch_size": batch_size, "sampling.seed": seed})
        one = m.method.stochastic and m.n_samples_for(n_samples) == 1
        if not one and (why := m.calibration_mismatch(n_samples)):
            say(f"warning: {why}")
        predicted: dict[int, int] = {}
        sources: set[Path] = set()
        split: set[Path] = set()
        skipped = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationMismatch)  # said once above
            for r in m.predict_files(files, out_dir, axes=axes, channels=channel,
                                     n_samples=n_samples, save_samples=save_samples,
                                     overwrite=overwrite, device=device, progress=True,
                                     devices=_parse_devices(devices), num_nodes=num_nodes,
                                     strategy=strategy, accelerator=accelerator,
                                     output_format=fmt, stem=stem):
                me = this_process()
                skipped += r.skipped
                predicted[r.rank] = predicted.get(r.rank, 0) + (not r.skipped)
                if not r.skipped:
                    sources.add(r.source)
                if r.planes is not None:
                    split.add(r.source)
                if r.rank != me.rank:  # another rank's, reported there as it was done
                    continue
                tag = f"[rank {me.rank}/{me.world_size}] " if me.world_size > 1 else ""
                if r.skipped:
                    say(f"{tag}{r.source}: skipped, its outputs exist ({r.outputs['mmse']}; "
                        f"--overwrite predicts it again)")
                else:
                    share = "" if r.planes is None else (
                        f" planes {r.planes[0]}–{r.planes[-1]}" if len(r.planes) > 1
                        else f" plane {r.planes[0]}")
                    say(f"{tag}{r.source}{share} → "
                        + ", ".join(str(p) for p in r.outputs.values())
                        + (" (1 sample: no std)" if one else ""))
    except (*USER_ERRORS, RankFailedError) as err:
        fail(str(err))
    me = this_process()
    if me.rank == 0:
        by = "" if me.world_size == 1 else f" by {me.world_size} processes (" + ", ".join(
            f"rank {k}: {predicted.get(k, 0)}" for k in range(me.world_size)) + (
            f"; {len(split)} split by planes" if split else "") + ")"
        say(f"done: {len(sources)} predicted{by}, {skipped} skipped; outputs in "
            f"{out_dir}")


def distill(
    model: Annotated[Path, typer.Argument(help="Trained HazeMatching model (the teacher).")],
    data: Annotated[Path, typer.Argument(help="Training data, as for `train` (use the "
                                              "teacher's, so that its validation images stay "
                                              "unseen).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory of the distilled model.")],
    steps: Annotated[int, typer.Option(help="Euler steps (network calls) per posterior sample "
                                            "of the distilled model.")] = 4,
    teacher_steps: Annotated[int, typer.Option(
        help="Steps of the teacher's solver that make the target of one distilled step.")] = 2,
    val: ValOption = None,
    epochs: EpochsOption = None,
    max_steps: MaxStepsOption = None,
    max_minutes: MaxMinutesOption = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: 0.2 × the "
                                                  "teacher's).")] = None,
    accelerator: AcceleratorOption = None,
    devices: DevicesOption = None,
    set_: Annotated[list[str], typer.Option("--set", help="Any training config field, e.g. "
                                            "--set training.batch_size=8.")] = [],  # noqa: B006
    resume: ResumeOption = True,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished model in OUT.")] = False,
) -> None:
    """Distil a trained model into a few-step sampler (flow-map distillation), calibrated."""
    from hazematching.distill import distill as run_distillation

    try:
        overrides = {"training.epochs": epochs, "training.max_steps": max_steps,
                     "training.max_minutes": max_minutes, "training.lr": lr,
                     "training.accelerator": accelerator,
                     "training.devices": _parse_devices(devices), **_parse_sets(set_)}
        student = run_distillation(model, data, val, out_dir=out, steps=steps,
                                   teacher_steps=teacher_steps,
                                   overrides={k: v for k, v in overrides.items()
                                              if v is not None},
                                   resume=resume, overwrite=overwrite)
    except USER_ERRORS as err:
        fail(str(err))
    if student.path is not None:
        _say_calibration(student)
        say(f"distilled model ({steps} network calls per sample) written to {student.path}")


def _say_calibration(model: Any) -> None:
    """Report the calibration fitted at the end of training, if there was one."""
    fit = model.provenance.get("calibration_fit")
    if fit:
        say(f"calibrated on {fit['pixels']} validation pixels of {fit['images']} image(s), "
            f"{fit['n_samples']} samples: ENCE {fit['ence_before']:.3f} → "
            f"{fit['ence_after']:.3f}{_heldout(fit.get('ence_heldout'))} "
            f"(plot: {model.path / 'calibration.png'})")


def calibrate(
    model: Annotated[Path, typer.Argument(help="Model directory.")],
    val: Annotated[Path, typer.Argument(help="Validation pairs (either layout).")],
    n_samples: Annotated[int | None, typer.Option(help="Posterior samples per pixel (>= 2).")
                         ] = None,
    preset: Annotated[str | None, typer.Option(
        help="Sampling preset to calibrate (fast, balanced or paper); the model keeps it, so "
             "that later predictions use the settings the calibration was fitted for.")] = None,
    bins: Annotated[int, typer.Option(help="Equal-width std bins.")] = 50,
    calibrator: Annotated[str | None, typer.Option(
        help="'monotone' (the increasing curve through the RMSE-vs-RMV bins) or 'linear' "
             "(RMSE ≈ a·RMV + b); default: the model's training.calibrator.")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of RMSE vs RMV (default: "
                                                   "MODEL/calibration.png).")] = None,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Fit the std calibration (RMSE vs RMV) on validation pairs and store it."""
    from hazematching.api import check_device, check_n_samples, load_model
    from hazematching.calibration import check_kind

    try:
        check_device(device)
        check_n_samples(n_samples)
        if bins < 1:
            raise ValueError(f"--bins must be at least 1, got {bins}")
        if calibrator is not None:
            check_kind(calibrator, "--calibrator")
        m = load_model(model)
        if m.path is None:
            raise ValueError(f"{model}: calibrate a model directory, not an archive")
        if preset:
            m.reconfigure(preset_overrides(preset))
        rep = m.calibrate(val, n_samples=n_samples, n_bins=bins, kind=calibrator,
                          device=device, plot=plot or model / "calibration.png", progress=True)
    except USER_ERRORS as err:
        fail(str(err))
    c = rep.calibration
    shape = f"monotone through {len(c.knots)} bins, " if c.knots else ""
    say(f"calibration {shape}a={c.a:.4f} b={c.b:.4f}; ENCE on these pairs "
        f"{rep.ence_before:.4f} → {rep.ence_after:.4f}{_heldout(rep.ence_heldout)}")


def _heldout(ence: float | None) -> str:
    """The held-out ENCE as the CLI reports it next to the in-sample one ('' without one)."""
    return "" if ence is None else f", {ence:.3f} on images held out of the fit (2-fold)"


def write_config(
    out: Annotated[Path, typer.Argument(help="YAML file to write.")],
    method: Annotated[str, typer.Option()] = "hazematching",
) -> None:
    """Write a default configuration to edit."""
    if out.exists():
        fail(f"{out} exists; choose another file name")
    ModelConfig().with_overrides({"method": method}, source="--method").to_yaml(out)
    say(f"wrote {out}")


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for data, model, figures.")
                   ] = Path("demo_out"),
    minutes: Annotated[float, typer.Option(help="Training time budget (minutes).")] = 4.5,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Simulate data, train a small model, calibrate it, dehaze a held-out image, plot."""
    from hazematching.demo import run_demo

    try:
        summary = run_demo(out, train_minutes=minutes, device=device)
    except USER_ERRORS as err:
        fail(str(err))
    console.print(summary)


def benchmark(
    config: Annotated[Path, typer.Argument(help="Benchmark YAML (dataset, out, budget, "
                                                "methods, evaluation).")],
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Train (or load) every listed method, predict the test split, evaluate, report."""
    from hazematching.benchmark import BenchmarkConfig, run_benchmark, summary_table

    try:
        bench = BenchmarkConfig.from_yaml(config)
        html = run_benchmark(bench, device=device)
    except USER_ERRORS as err:
        fail(str(err))
    print(summary_table(html.parent))
    say(f"report: {html}")
