"""One self-contained HTML report (figures embedded as base64 PNG) rendered from results JSON.

:func:`render_report` re-renders everything — tables, figures, HTML — from saved evaluation
results, without recomputing any metric.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hazematching.io import atomic_write_text
from hazematching.metrics.evaluate import load_gallery, load_results
from hazematching.report.plots import (
    calibration_png,
    gallery_figure,
    perception_distortion_figure,
    save_png,
)
from hazematching.report.tables import (
    METRIC_INFO,
    UNCERTAINTY_INFO,
    MetricInfo,
    Rows,
    columns,
    format_value,
    safe_name,
    table_data,
    unavailable_notes,
    uncertainty_data,
    write_tables,
)

REPORT_FILE = "report.html"
_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
.warn { background: #fff3cd; border: 1px solid #e0c36c; padding: 0.5em 1em; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def html_table(rows: Rows, info: Mapping[str, MetricInfo]) -> str:
    """An HTML table of ``{row: {metric: value}}`` (missing values shown as —)."""
    cols = columns(rows, info)
    head = "".join(f"<th>{html.escape(info[c].label)} {info[c].arrow}</th>" for c in cols)
    body = []
    for name, values in rows.items():
        cells = "".join(f"<td>{format_value(values.get(c), info[c])}</td>" for c in cols)
        body.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>"


def _settings_line(res: Mapping[str, Any]) -> str:
    s = res["settings"]
    samples = s.get("samples_per_image")
    if samples:
        lo, hi = min(samples), max(samples)
        sample_text = f"samples per image: {lo}" + (f"–{hi}" if hi > lo else "")
    else:
        sample_text = "no samples"
    parts = [f"{s['n_images']} image(s)", sample_text,
             f"LPIPS/FID/FSIM on ≤ {s['max_perceptual_samples']} sample(s) per image",
             f"intensity mapping for perceptual measures: {s['value_range']}",
             f"FRC threshold {s['frc_threshold']:.3f}",
             f"power-ratio band > {s['power_cutoff']} cycles/px"]
    if s.get("pixel_size_um"):
        parts.append(f"pixel size {s['pixel_size_um']} µm")
    if s.get("fid_reference"):
        parts.append(f"FID reference: {s['fid_reference']}")
    return (f"<li><b>{html.escape(str(res['method']))}</b>: "
            f"{html.escape('; '.join(parts))}</li>")


def render_report(results_paths: Sequence[str | Path], out_dir: str | Path,
                  title: str = "HazeMatching evaluation") -> Path:
    """Write tables, figures and a self-contained ``report.html`` from results JSON files.

    Args:
        results_paths: ``results.json`` files from :func:`hazematching.metrics.evaluate_folders`
            or :func:`~hazematching.metrics.save_results` (one per dataset and method). A
            ``gallery`` file named in a result is looked up next to its JSON.
        out_dir: report folder; gets ``tables/``, ``figures/`` and ``report.html``.
        title: page title.

    Returns:
        Path of ``report.html``.
    """
    if not results_paths:
        raise ValueError("no results files given")
    paths = [Path(p) for p in results_paths]
    results = [load_results(p) for p in paths]
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    write_tables(results, out_dir / "tables")
    data = table_data(results)
    unc = uncertainty_data(results)
    notes = unavailable_notes(results)

    parts = [f"<h1>{html.escape(title)}</h1>"]
    for ds, rows in data.items():
        stem = safe_name(ds)
        parts.append(f"<h2>Dataset: {html.escape(ds)}</h2><ul>")
        parts += [_settings_line(r) for r in results if str(r["dataset"]) == ds]
        parts.append("</ul>")
        if notes.get(ds):
            items = "".join(f"<li>{html.escape(n)}</li>" for n in notes[ds])
            parts.append(f'<div class="warn"><b>Metrics not computed</b> (shown as —):'
                         f"<ul>{items}</ul></div>")
        parts.append("<h3>Metrics</h3>" + html_table(rows, METRIC_INFO))
        fig = perception_distortion_figure(rows, title=f"{ds}: perception–distortion")
        if fig is not None:
            png = save_png(fig, fig_dir / f"{stem}_perception_distortion.png")
            parts.append(_img(png, f"{ds} perception–distortion"))
        if ds in unc:
            parts.append("<h3>Uncertainty calibration</h3>" + html_table(unc[ds],
                                                                         UNCERTAINTY_INFO))
            curves = {str(r["method"]): r["uncertainty"]["curve"] for r in results
                      if str(r["dataset"]) == ds and r.get("uncertainty")}
            png = calibration_png(curves, fig_dir / f"{stem}_calibration.png",
                                  title=f"{ds}: calibration")
            parts.append(_img(png, f"{ds} calibration"))
        for path, res in zip(paths, results):
            if str(res["dataset"]) != ds or not res.get("gallery"):
                continue
            gallery_file = path.parent / res["gallery"]
            if not gallery_file.is_file():
                raise ValueError(f"{path}: names gallery file {res['gallery']!r}, which is "
                                 f"missing from {path.parent}")
            fig = gallery_figure(load_gallery(gallery_file),
                                 title=f"{res['method']}: {res['images'][0]}")
            png = save_png(fig, fig_dir / f"{stem}_{safe_name(str(res['method']))}_gallery.png")
            parts.append(f"<h3>Gallery: {html.escape(str(res['method']))}</h3>"
                         + _img(png, "gallery"))
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    out = out_dir / REPORT_FILE
    atomic_write_text(out, page)
    return out
