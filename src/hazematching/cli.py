"""The ``hazematching`` command line: a thin typer layer over the Python API."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from hazematching.config import ModelConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Dehaze widefield fluorescence microscopy images with calibrated "
                       "uncertainty (HazeMatching).")
console = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _parse_sets(sets: list[str]) -> dict[str, Any]:
    out = {}
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE (e.g. training.epochs=50), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _expand_inputs(inputs: list[str]) -> list[Path]:
    from hazematching.io import TIFF_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in TIFF_SUFFIXES)
        elif any(c in item for c in "*?["):
            files += sorted(Path(f) for f in glob.glob(item))
        else:
            files.append(p)
    if not files:
        raise ValueError(f"no input images found in {', '.join(inputs)}")
    return files


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Training folder or dataset root (train/ + val/, "
                                              "train_crop/ + val_crop/, or input/ + target/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    config: Annotated[Path | None, typer.Option(help="YAML config (see `hazematching config`).")
                      ] = None,
    val: Annotated[Path | None, typer.Option(help="Validation folder.")] = None,
    method: Annotated[str | None, typer.Option(help="Restoration method.")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    max_steps: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    patch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto, cpu, gpu.")] = None,
    devices: Annotated[str | None, typer.Option(help="Number of devices or 'auto'.")] = None,
    strategy: Annotated[str | None, typer.Option(help="auto, ddp, ….")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Any config field, e.g. "
                                            "--set network.model_channels=64.")] = [],  # noqa: B006
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoints/last.ckpt.")
                      ] = True,
) -> None:
    """Train a model on paired widefield/confocal images."""
    from hazematching.api import Model
    from hazematching.model_io import META_FILE

    try:
        cfg = ModelConfig.from_yaml(config) if config else ModelConfig()
        dev = None if devices is None else (int(devices) if devices.isdigit() else devices)
        cfg = cfg.with_overrides({
            "method": method, "training.epochs": epochs, "training.max_steps": max_steps,
            "training.batch_size": batch_size, "data.patch_size": patch_size,
            "training.lr": lr, "training.accelerator": accelerator, "training.devices": dev,
            "training.strategy": strategy, **_parse_sets(set_)}, source="command-line options")
        if (out / META_FILE).exists() and not (out / "checkpoints" / "last.ckpt").exists():
            raise FileExistsError(f"{out} already holds a finished model; choose another --out")
        model = Model(cfg).fit(data, val, out_dir=out, resume=resume)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        _fail(str(err))
    if model.path is not None:
        console.print(f"model written to [bold]{model.path}[/]")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="Model directory or .zip archive.")],
    inputs: Annotated[list[str], typer.Argument(help="TIFF files, folders or glob patterns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    axes: Annotated[str | None, typer.Option(help="Axes of the inputs, e.g. YX, ZYX, TYX, "
                                                  "SYX (default: from the file).")] = None,
    n_samples: Annotated[int | None, typer.Option(help="Posterior samples per image.")] = None,
    save_samples: Annotated[bool, typer.Option(help="Also write the samples.")] = False,
    solver: Annotated[str | None, typer.Option(help="euler or heun.")] = None,
    n_time_points: Annotated[int | None, typer.Option(help="ODE grid points.")] = None,
    tile_size: Annotated[int | None, typer.Option()] = None,
    tile_overlap: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option(help="Network batch size.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ….")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Dehaze images: write <name>_mmse.tif, <name>_std.tif (and <name>_samples.tif)."""
    from hazematching.api import load_model

    try:
        m = load_model(model)
        m.set_sampling(solver=solver, n_time_points=n_time_points, tile_size=tile_size,
                       tile_overlap=tile_overlap, batch_size=batch_size, seed=seed)
        for f in _expand_inputs(inputs):
            written = m.predict_file(f, out, axes=axes, n_samples=n_samples,
                                     save_samples=save_samples, overwrite=overwrite,
                                     device=device, progress=True)
            console.print(f"{f} → " + ", ".join(str(p) for p in written.values()))
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        _fail(str(err))


@app.command()
def calibrate(
    model: Annotated[Path, typer.Argument(help="Model directory.")],
    val: Annotated[Path, typer.Argument(help="Validation pairs (either layout).")],
    n_samples: Annotated[int | None, typer.Option()] = None,
    bins: Annotated[int, typer.Option(help="Equal-width std bins.")] = 50,
    plot: Annotated[Path | None, typer.Option(help="PNG of RMSE vs RMV (default: "
                                                   "MODEL/calibration.png).")] = None,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Fit the std calibration (RMSE ≈ a·RMV + b) on validation pairs and store it."""
    from hazematching.api import load_model

    try:
        m = load_model(model)
        if m.path is None:
            raise ValueError(f"{model}: calibrate a model directory, not an archive")
        rep = m.calibrate(val, n_samples=n_samples, n_bins=bins, device=device,
                          plot=plot or model / "calibration.png", progress=True)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    console.print(f"calibration a={rep.calibration.a:.4f} b={rep.calibration.b:.4f}; ENCE "
                  f"{rep.ence_before:.4f} → {rep.ence_after:.4f}")


@app.command("config")
def write_config(
    out: Annotated[Path, typer.Argument(help="YAML file to write.")],
    method: Annotated[str, typer.Option()] = "hazematching",
) -> None:
    """Write a default configuration to edit."""
    if out.exists():
        _fail(f"{out} exists; choose another file name")
    ModelConfig().with_overrides({"method": method}, source="--method").to_yaml(out)
    console.print(f"wrote {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for data, model, figures.")
                   ] = Path("demo_out"),
    minutes: Annotated[float, typer.Option(help="Training time budget (minutes).")] = 5.0,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Simulate data, train a small model, calibrate it, dehaze a held-out image, plot."""
    from hazematching.demo import run_demo

    try:
        summary = run_demo(out, train_minutes=minutes, device=device)
    except (ValueError, FileExistsError) as err:
        _fail(str(err))
    console.print(summary)


def main() -> None:  # pragma: no cover - console entry point
    app()
