"""``evaluate`` and ``report`` commands, written for registration on the typer app::

    app.command("evaluate")(evaluate_command)
    app.command("report")(report_command)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hazematching.cli.common import fail


def _split_metrics(metrics: list[str] | None) -> list[str] | None:
    """Accept ``--metrics psnr --metrics ssim`` as well as ``--metrics psnr,ssim``."""
    if not metrics:
        return None
    return [m for item in metrics for m in item.split(",") if m.strip()]


def evaluate_command(
    predictions: Annotated[Path, typer.Argument(
        help="Folder with <stem>_mmse.tif (and optionally <stem>_std.tif, "
             "<stem>_samples.tif) per target.")],
    targets: Annotated[Path, typer.Argument(
        help="Folder of target TIFFs: 2-D images, or 2-channel CYX (ch0 confocal target, "
             "ch1 widefield input).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder to write.")],
    weights_dir: Annotated[Path | None, typer.Option(
        help="Folder with alexnet-owt-7be5be79.pth (LPIPS) and "
             "weights-inception-2015-12-05-6726825d.pth (FID); default "
             "$HAZEMATCHING_WEIGHTS_DIR or torch's hub cache. Never downloaded.")] = None,
    fid_reference: Annotated[Path | None, typer.Option(
        help="Folder of training target TIFFs used as the FID reference set "
             "(default: the evaluation targets).")] = None,
    metrics: Annotated[list[str] | None, typer.Option(
        help="Metrics to compute (repeat or comma-separate); default all: psnr, ri_psnr, "
             "ssim, ms_ssim, micro_ssim, micro_ms3im, fsim, gmsd, lpips, fid, frc, "
             "power_ratio, uncertainty.")] = None,
    pixel_size: Annotated[float | None, typer.Option(
        help="Pixel size in µm (adds the FRC resolution in µm).", min=0.0)] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Dataset label in tables (default: the targets folder name).")] = None,
    method: Annotated[str | None, typer.Option(
        help="Method label in tables (default: the predictions folder name).")] = None,
    perceptual_samples: Annotated[int, typer.Option(
        help="Samples per image used for LPIPS, FID and FSIM.", min=1)] = 5,
) -> None:
    """Score predictions against targets; write results.json, tables, figures and report.html."""
    from hazematching.metrics.evaluate import METRICS, RESULTS_FILE, evaluate_folders
    from hazematching.report import render_report

    try:
        results = evaluate_folders(
            predictions, targets, out_dir=out, metrics=_split_metrics(metrics) or METRICS,
            weights_dir=weights_dir, fid_reference=fid_reference, pixel_size_um=pixel_size,
            dataset=dataset, method=method, max_perceptual_samples=perceptual_samples)
        report = render_report([out / RESULTS_FILE], out)
    except (ValueError, FileNotFoundError) as err:  # ImageError is a ValueError
        fail(str(err))
    for metric, reason in results["unavailable"].items():
        typer.echo(f"not computed: {metric} — {reason}", err=True)
    mmse = results["variants"]["mmse"]["dataset"]
    shown = ", ".join(f"{k} {v:.4g}" for k, v in mmse.items() if v is not None)
    typer.echo(f"MMSE: {shown}")
    typer.echo(f"wrote {out / RESULTS_FILE} and {report}")


def report_command(
    results: Annotated[list[Path], typer.Argument(
        help="results.json file(s) written by `evaluate` (one per dataset and method).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder to write.")],
    title: Annotated[str, typer.Option(help="Page title.")] = "HazeMatching evaluation",
) -> None:
    """Re-render tables, figures and report.html from saved results (no recomputation)."""
    from hazematching.report import render_report

    try:
        report = render_report(results, out, title=title)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    typer.echo(f"wrote {report}")
