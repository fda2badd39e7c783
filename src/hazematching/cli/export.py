"""``hazematching export`` and ``hazematching import-bmz``: BioImage Model Zoo packages."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from hazematching.cli.common import USER_ERRORS, fail, say


def export_command(
    model: Annotated[Path, typer.Argument(help="Model directory or .zip archive.")],
    bmz: Annotated[Path, typer.Option("--bmz", help="BioImage Model Zoo package (.zip) to "
                                      "write.")],
    image: Annotated[Path | None, typer.Option(
        help="TIFF whose centre (one tile of sampling.tile_size px) becomes the package's test "
             "input and cover (default: a simulated widefield image).")] = None,
    axes: Annotated[str | None, typer.Option(help="Axes of --image (default: from the "
                                                  "file).")] = None,
    channel: Annotated[list[int] | None, typer.Option(
        help="Input channel(s) of a multi-channel --image, e.g. --channel 1 for the widefield "
             "channel of a paper-layout pair.")] = None,
    n_samples: Annotated[int | None, typer.Option(
        help="Posterior samples per block (default: the model's sampling.n_samples).")] = None,
    author: Annotated[list[str] | None, typer.Option(
        help="Author of the model (repeatable; default: the HazeMatching paper's).")] = None,
    name: Annotated[str | None, typer.Option(help="Package name.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing package.")] = False,
) -> None:
    """Export a trained model as a BioImage Model Zoo package (MMSE and calibrated std)."""
    from hazematching.bmz import export_bmz
    from hazematching.io import read_image

    try:
        pixels, axes = read_image(image, axes) if image is not None else (None, axes)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = export_bmz(model, bmz, image=pixels, axes=axes, channels=channel,
                                n_samples=n_samples, authors=author, name=name,
                                overwrite=overwrite)
    except USER_ERRORS as err:
        fail(str(err))
    warned = {str(w.message) for w in caught}
    for note in result.notes:
        say(f"{'warning' if note in warned else 'note'}: {note}")
    say(f"wrote {result.path} (outputs: {', '.join(result.outputs)})")


def import_bmz_command(
    package: Annotated[Path, typer.Argument(help="BMZ package (.zip) exported by hazematching.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a model already in --out.")] = False,
) -> None:
    """Restore the model of a BMZ package exported by hazematching as a model directory."""
    from hazematching.bmz import import_bmz

    try:
        import_bmz(package, out, overwrite=overwrite)
    except USER_ERRORS as err:
        fail(str(err))
    say(f"model restored in {out}")
