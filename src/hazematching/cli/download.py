"""``hazematching download`` and ``hazematching split``: typer commands for the main CLI.

Mounted by :mod:`hazematching.cli` with ``app.command("download")(download_command)`` and
``app.command("split")(split_command)``; kept apart so the main CLI stays small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer

from hazematching.cli.common import console, fail
from hazematching.data.datasets import dataset_names


def download_command(
    name: Annotated[str, typer.Argument(help=f"Dataset: {', '.join(dataset_names())}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parent folder: the dataset goes to "
                                      "OUT/NAME/, a model (--model) to OUT/NAME/ (zebrafish: "
                                      "OUT/zebrafish_CHANNEL/).")],
    model: Annotated[bool, typer.Option("--model", help="Import the published pre-trained model "
                                        "instead of the dataset.")] = False,
    base_url: Annotated[str | None, typer.Option(help="Mirror replacing the published address "
                                                      "(data/ or checkpoints/ base).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Download cache (default "
                                                        "$HAZEMATCHING_CACHE or "
                                                        "~/.cache/hazematching).")] = None,
    channel: Annotated[list[str] | None, typer.Option(
        "--channel", help="With --model for zebrafish: source channel(s) whose statistics "
        "normalise the model (repeatable; default: every channel, one model each).")] = None,
) -> None:
    """Download a published dataset, or (--model) import its pre-trained model."""
    from hazematching.data.datasets import DatasetError, download_dataset, get_preset
    from hazematching.data.download import DownloadError
    from hazematching.data.published import import_published_model

    try:
        preset = get_preset(name)
        if not model:
            if channel:
                raise ValueError("--channel only applies to --model imports")
            path = download_dataset(name, out, base_url=base_url, cache_dir=cache_dir)
            console.print(f"{name} dataset ready in {path}")
            return
        if preset.source_channels:
            unknown = sorted(set(channel or ()) - set(preset.source_channels))
            if unknown:  # checked up front so that no model is written before the error
                raise ValueError(f"unknown channel(s) {', '.join(unknown)} for {name}; expected "
                                 f"{', '.join(preset.source_channels)}")
            jobs = [(out / f"{name}_{c}", {"zebrafish_channel": c})
                    for c in channel or preset.source_channels]
        elif channel:
            raise ValueError(f"dataset {name!r} has one set of statistics; --channel does not "
                             f"apply")
        else:
            jobs = [(out / name, {})]
        for model_dir, options in jobs:
            import_published_model(name, model_dir, base_url=base_url, cache_dir=cache_dir,
                                   **options)
            console.print(f"published {name} model ready in {model_dir}; run: hazematching "
                          f"predict {model_dir} IMAGE.tif --out OUT")
    except (DownloadError, DatasetError, ValueError, FileExistsError, OSError) as err:
        fail(str(err))


def split_command(
    src: Annotated[Path, typer.Argument(help="Folder of large paired images (paper layout or "
                                             "input/ + target/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New dataset folder to write.")],
    val_fraction: Annotated[float, typer.Option(help="Share of images for validation.")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Share of images for testing.")] = 0.1,
    patch_size: Annotated[int, typer.Option(help="Side of the exported patches (px).")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the image-to-split assignment.")] = 0,
    layout: Annotated[str, typer.Option(help="auto, paper or input_target.")] = "auto",
    axes: Annotated[str | None, typer.Option(help="Axes of the files (default: from the "
                                                  "file).")] = None,
) -> None:
    """Split paired images into train/val/test and export train/val patches (paper layout)."""
    from hazematching.data.pairs import Layout
    from hazematching.data.splits import split_dataset

    if layout not in ("auto", "paper", "input_target"):
        fail(f"--layout must be auto, paper or input_target, got {layout!r}")
    try:
        summary = split_dataset(src, out, val_fraction=val_fraction, test_fraction=test_fraction,
                                patch_size=patch_size, seed=seed, layout=cast(Layout, layout),
                                axes=axes)
    except (ValueError, FileExistsError, OSError) as err:
        fail(str(err))
    counts = ", ".join(f"{k}: {len(v)} image(s)" for k, v in summary.images.items())
    patches = ", ".join(f"{k}: {n}" for k, n in summary.patches.items())
    console.print(f"wrote {summary.root} ({counts}; patches {patches})")
