"""Report figures as PNG: perception–distortion scatter, calibration curves, image gallery.

Figures are built with matplotlib's object interface on the Agg canvas (no pyplot state, no
display needed); calibration curves reuse :func:`hazematching.calibration.plot_calibration`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hazematching.calibration import CalibrationCurve, plot_calibration
from hazematching.io import atomic_path

_DPI = 120


def save_png(fig: Figure, path: str | Path) -> Path:
    """Render a figure to a PNG file atomically."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return path


def realism_axis(rows: Mapping[str, Mapping[str, float | None]]) -> tuple[str, str] | None:
    """Pick the realism measure present for every row: LPIPS, else FID, else power ratio.

    Returns:
        ``(metric key, axis label)`` or None when no realism measure covers all rows.
    """
    choices = (("lpips", "LPIPS ↓ (perceptual distance)"), ("fid", "FID ↓"),
               ("power_ratio", "|log10 HF power ratio| ↓ (0 = target-like spectrum)"))
    for key, label in choices:
        if rows and all(r.get(key) is not None for r in rows.values()):
            return key, label
    return None


def perception_distortion_figure(rows: Mapping[str, Mapping[str, float | None]],
                                 title: str = "") -> Figure | None:
    """Scatter one point per row: realism measure (x) against PSNR (y), each labelled.

    Args:
        rows: ``{row label: {metric: value}}`` for one dataset (see report.tables.table_data).
        title: figure title (e.g. the dataset).

    Returns:
        The figure, or None when PSNR or every realism measure is missing for some row.
    """
    axis = realism_axis(rows)
    if axis is None or not all(r.get("psnr") is not None for r in rows.values()):
        return None
    key, xlabel = axis
    fig = Figure(figsize=(8.0, 4.6))
    ax = fig.add_subplot()
    markers = "osD^vP*Xhp<>"
    for k, (label, r) in enumerate(rows.items()):
        x = abs(math.log10(r[key])) if key == "power_ratio" and r[key] > 0 else r[key]
        # Numbered points plus a legend: methods often cluster too closely for inline labels.
        ax.scatter([x], [r["psnr"]], s=45, marker=markers[k % len(markers)],
                   label=f"{k + 1}. {label}")
        ax.annotate(str(k + 1), (x, r["psnr"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("PSNR (dB) ↑")
    ax.set_title(title or "Perception–distortion")
    ax.grid(alpha=0.3)
    ax.margins(0.2)
    fig.tight_layout()
    return fig


def calibration_png(curves: Mapping[str, Mapping[str, Any]], path: str | Path,
                    title: str = "Calibration") -> Path:
    """RMSE against RMV per method with the identity line, written as PNG.

    Args:
        curves: ``{label: {"rmv", "rmse", "counts", "bin_edges"}}`` lists as stored in the
            results' ``uncertainty.curve``.
        path: destination PNG.
        title: plot title.
    """
    parsed = {label: CalibrationCurve(rmv=np.asarray(c["rmv"], float),
                                      rmse=np.asarray(c["rmse"], float),
                                      counts=np.asarray(c["counts"]),
                                      bin_edges=np.asarray(c["bin_edges"], float))
              for label, c in curves.items()}
    return plot_calibration(parsed, path, title=title)


def _display_range(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def gallery_figure(panels: Mapping[str, np.ndarray], title: str = "") -> Figure:
    """One row of image panels: input, target, MMSE, up to three samples, std.

    Args:
        panels: arrays from :func:`hazematching.metrics.load_gallery`: ``target``, ``mmse``
            ``(Y, X)``; optional ``input``, ``std`` ``(Y, X)`` and ``samples`` ``(S, Y, X)``.
        title: figure title.

    Target, MMSE and samples share one grey scale (the target's 0.5–99.5 percentiles) so
    their contrast is comparable; the input has its own scale and the std a colour map.
    """
    if "target" not in panels or "mmse" not in panels:
        raise ValueError(f"a gallery needs 'target' and 'mmse' panels, got {sorted(panels)}")
    shared = _display_range(panels["target"])
    items: list[tuple[str, np.ndarray, tuple[float, float], str]] = []
    if "input" in panels:
        items.append(("widefield input", panels["input"], _display_range(panels["input"]),
                      "gray"))
    items.append(("target", panels["target"], shared, "gray"))
    items.append(("MMSE", panels["mmse"], shared, "gray"))
    for i, s in enumerate(panels.get("samples", [])[:3]):
        items.append((f"sample {i + 1}", s, shared, "gray"))
    if "std" in panels:
        items.append(("predicted std", panels["std"], _display_range(panels["std"]), "magma"))
    fig = Figure(figsize=(2.3 * len(items), 2.7))
    for k, (name, img, (lo, hi), cmap) in enumerate(items):
        ax = fig.add_subplot(1, len(items), k + 1)
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
        if cmap != "gray":
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
