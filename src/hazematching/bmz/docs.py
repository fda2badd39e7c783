"""The human-facing parts of a BMZ package: its cover image and its README."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from hazematching.report.plots import save_png
from hazematching.sampling import network_calls

if TYPE_CHECKING:
    from hazematching.api import Model

PAPER_AUTHORS = ("Anirban Ray", "Ashesh", "Florian Jug")
PAPER_CITATION = ('Ray, Ashesh, Jug. "Dehazing Light Microscopy Images with Guided Conditional '
                  'Flow Matching." CVPR 2026; arXiv 2506.22397.')
PAPER_DOI = "10.48550/arXiv.2506.22397"


def cover_image(path: Path, widefield: np.ndarray, mmse: np.ndarray,
                std: np.ndarray | None) -> Path:
    """A 2:1 PNG of the package's test prediction: input, MMSE and (if any) std, all (Y, X).

    Input and MMSE each get their own grey scale (0.5–99.5 percentiles), the std a colour map.
    """
    panels = [("widefield input", widefield, "gray"), ("dehazed (MMSE)", mmse, "gray")]
    if std is not None:
        panels.append(("posterior std", std, "magma"))
    fig = Figure(figsize=(8, 4))
    for k, (title, img, cmap) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        lo, hi = np.percentile(img, [0.5, 99.5])
        ax.imshow(img, cmap=cmap, vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
        ax.set_title(title, fontsize=11)
        ax.set_axis_off()
    fig.tight_layout()
    return save_png(fig, path)


def readme_text(model: Model, kwargs: dict[str, Any], notes: list[str]) -> str:
    """The package's documentation (Markdown): what goes in and out, how, and its limits."""
    cfg, norm = model.config, model.normalizer
    assert norm is not None
    s = cfg.sampling
    stats = "; ".join(f"channel {i}: offset {c.offset:.6g}, scale {c.scale:.6g}"
                      for i, c in enumerate(norm.inputs))
    rule = ("z-score (mean, std)" if norm.kind == "meanstd" else
            f"percentiles {norm.percentiles[0]:g}–{norm.percentiles[1]:g}")
    if model.method.stochastic:
        calls = kwargs["n_samples"] * network_calls(kwargs["solver"], kwargs["n_time_points"])
        mean = ("the mean of the samples, and `std`, their per-pixel standard deviation"
                if kwargs["mmse"] == "samples" else
                "the mean of the one-call posterior-mean estimates x0 + v(0, x0, y) of the same "
                "noise draws (the solver's first step), and `std`, the spread of the samples "
                "about it")
        sampling = (f"Each block is predicted from {kwargs['n_samples']} posterior samples, each "
                    f"an ODE solve ({kwargs['solver']}, {kwargs['n_time_points']} time points, "
                    f"'{kwargs['schedule']}' schedule) from Gaussian noise seeded with "
                    f"{kwargs['seed']} at every call, so the same block always gives the same "
                    f"output: {calls} U-Net evaluations per block. Outputs: `mmse`, {mean}.")
    else:
        sampling = "One U-Net evaluation per block. Output: `mmse`, the prediction."
    cal = model.calibration
    rule = ("" if cal is None else
            f"the monotone curve through {len(cal.knots)} RMSE-vs-RMV bins" if cal.knots else
            f"σ_cal = max({cal.a:.6g}·σ + {cal.b:.6g}, 0)")
    std_post = ("" if not model.method.stochastic else
                f"\n* `std`: σ_cal · {norm.target.scale:.6g}, where the network has applied "
                f"the calibration ({rule}, normalised units)" if cal else
                f"\n* `std`: σ · {norm.target.scale:.6g} (target scale only: uncalibrated)")
    return f"""# HazeMatching: dehazing widefield fluorescence microscopy

Exported by hazematching from a trained `{cfg.method}` model. The network restores a
confocal-like image from a hazy widefield image (2-D, {cfg.in_channels} input channel(s)).
HazeMatching (Ray, Ashesh, Jug, CVPR 2026, arXiv 2506.22397) trains a velocity network
v(t, x_t, y) by conditional flow matching from Gaussian noise to the clean image, guided by the
widefield image y; every ODE solve from fresh noise is one posterior sample.

{chr(10).join(f"**Note.** {n}" for n in notes)}

## Input and output

* Input `widefield`: (batch, channel, y, x) float32, raw intensities as recorded. Sides are
  {s.tile_size} + n·{cfg.network.divisor} px; larger images are cut into blocks by the
  consumer (the model was run on {s.tile_size}-px tiles in training and prediction).
* {sampling}

## Pre- and post-processing

The model was trained on intensities normalised per channel with statistics fitted on its
training data ({rule}), stored with the model:

* input: (x − offset) / scale, {stats}
* `mmse`: x · {norm.target.scale:.6g} + {norm.target.offset:.6g} (target intensity units){std_post}

## Use

With bioimageio.core: `bioimageio predict PACKAGE.zip --inputs IMAGE.npy` (or its Python API).
With hazematching, `hazematching import-bmz PACKAGE.zip --out MODEL_DIR` restores the full model
(tiled prediction of any image size, any number of samples, saved samples):
`hazematching predict MODEL_DIR images/ --out dehazed`.

## Validation

The package's test tensors check that a runtime reproduces the exported network, not that the
model is right. To measure its quality, predict held-out widefield images that have confocal
references (the test split of the training data, never seen in training) and compare:
`hazematching import-bmz PACKAGE.zip --out MODEL_DIR`,
`hazematching predict MODEL_DIR test/ --out pred --channel 1`,
`hazematching evaluate pred test/ --out report` — PSNR, MS-SSIM, LPIPS, FID and more on the
MMSE, and the calibration of the std (ENCE).

## Limitations

The model knows only the kind of images it was trained on (structures, optics, noise,
intensity range); on other data its output can look plausible and still be wrong, so check the
std and compare with the widefield input. Blocks are predicted independently: tile large images
with an overlap and blend them, as `hazematching predict` does.

## Citation

{PAPER_CITATION} doi:{PAPER_DOI}

Licence: MIT.
"""
