"""Result tables (Markdown, CSV, LaTeX): one per dataset, one row per method and variant.

Input: evaluation results (see :mod:`hazematching.metrics.evaluate`), flattened by
:func:`table_data` into ``{dataset: {row: {metric: value}}}`` where a row is e.g.
``"HazeMatching (MMSE)"``, ``"HazeMatching (sample)"`` or ``"widefield input"``. Undefined or
unavailable values are shown as ``—`` (``--`` in LaTeX) and the reasons are listed below the
Markdown table, so a table with holes never reads as complete.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hazematching.io import atomic_write_text


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is shown: header label, which direction is better, decimals."""

    label: str
    better: str  # "higher", "lower", "one" (closest to 1) or "zero" (closest to 0)
    decimals: int

    @property
    def arrow(self) -> str:
        return {"higher": "↑", "lower": "↓", "one": "→1", "zero": "→0"}[self.better]


METRIC_INFO: dict[str, MetricInfo] = {
    "psnr": MetricInfo("PSNR (dB)", "higher", 2),
    "ri_psnr": MetricInfo("RI-PSNR (dB)", "higher", 2),
    "ssim": MetricInfo("SSIM", "higher", 3),
    "ms_ssim": MetricInfo("MS-SSIM", "higher", 3),
    "micro_ssim": MetricInfo("MicroSSIM", "higher", 3),
    "micro_ms3im": MetricInfo("MicroMS3IM", "higher", 3),
    "fsim": MetricInfo("FSIM", "higher", 3),
    "gmsd": MetricInfo("GMSD", "lower", 4),
    "lpips": MetricInfo("LPIPS", "lower", 3),
    "fid": MetricInfo("FID", "lower", 2),
    "frc_frequency": MetricInfo("FRC cut-off (1/px)", "higher", 3),
    "frc_resolution_um": MetricInfo("FRC res. (µm)", "lower", 3),
    "power_ratio": MetricInfo("HF power ratio", "one", 3),
}
UNCERTAINTY_INFO: dict[str, MetricInfo] = {
    "ence": MetricInfo("ENCE", "lower", 3),
    "calibration_a": MetricInfo("fit a", "one", 3),
    "calibration_b": MetricInfo("fit b", "zero", 4),
    "pearson_std_abs_error": MetricInfo("Pearson(std, |err|)", "higher", 3),
    "spearman_std_abs_error": MetricInfo("Spearman(std, |err|)", "higher", 3),
}
_VARIANT_LABEL = {"mmse": "MMSE", "sample": "sample"}
INPUT_ROW = "widefield input"

Rows = dict[str, dict[str, float | None]]


def row_label(method: str, variant: str) -> str:
    """Row name of one variant of a method, e.g. ``"HazeMatching (MMSE)"``."""
    return INPUT_ROW if variant == "input" else f"{method} ({_VARIANT_LABEL[variant]})"


def table_data(results: Sequence[Mapping[str, Any]]) -> dict[str, Rows]:
    """Dataset-level values as ``{dataset: {row: {metric: value or None}}}``.

    Args:
        results: evaluation results, one per (dataset, method).

    Raises:
        ValueError: two results share a dataset and method label, or two carry different
            values for the same dataset's input row.
    """
    out: dict[str, Rows] = {}
    seen: set[tuple[str, str]] = set()
    for res in results:
        ds, method = str(res["dataset"]), str(res["method"])
        if (ds, method) in seen:
            raise ValueError(f"two results are labelled dataset={ds!r}, method={method!r}; "
                             f"give each run a distinct method name")
        seen.add((ds, method))
        rows = out.setdefault(ds, {})
        for variant, block in res["variants"].items():
            label = row_label(method, variant)
            values = dict(block["dataset"])
            if label in rows and rows[label] != values:
                raise ValueError(f"dataset {ds!r}: the '{INPUT_ROW}' row differs between "
                                 f"results files (different inputs or settings?)")
            rows[label] = values
    return out


def uncertainty_data(results: Sequence[Mapping[str, Any]]) -> dict[str, Rows]:
    """``{dataset: {method: {uncertainty metric: value}}}`` for results that have one."""
    out: dict[str, Rows] = {}
    for res in results:
        unc = res.get("uncertainty")
        if unc:
            out.setdefault(str(res["dataset"]), {})[str(res["method"])] = {
                k: unc.get(k) for k in UNCERTAINTY_INFO}
    return out


def unavailable_notes(results: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """``{dataset: ["metric — reason (methods)", ...]}`` for every metric that could not run.

    Methods that miss a metric for the same reason share one line.
    """
    grouped: dict[str, dict[tuple[str, str], list[str]]] = {}
    for res in results:
        for metric, reason in res.get("unavailable", {}).items():
            one_line = " ".join(part.strip() for part in str(reason).splitlines())
            grouped.setdefault(str(res["dataset"]), {}).setdefault(
                (metric, one_line), []).append(str(res["method"]))
    return {ds: [f"{metric} — {reason} ({', '.join(methods)})"
                 for (metric, reason), methods in by_reason.items()]
            for ds, by_reason in grouped.items()}


def columns(rows: Rows, info: Mapping[str, MetricInfo]) -> list[str]:
    """Metrics of `info` present in any row, in `info` order."""
    present = {k for values in rows.values() for k in values}
    return [k for k in info if k in present]


def format_value(value: float | None, meta: MetricInfo, missing: str = "—") -> str:
    """A value with the metric's decimals, or `missing` for None."""
    return missing if value is None else f"{value:.{meta.decimals}f}"


def to_markdown(rows: Rows, info: Mapping[str, MetricInfo] = METRIC_INFO,
                notes: Sequence[str] = ()) -> str:
    """GitHub Markdown table with one row per entry and arrows marking the better direction."""
    cols = columns(rows, info)
    head = "| | " + " | ".join(f"{info[c].label} {info[c].arrow}" for c in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for name, values in rows.items():
        cells = [format_value(values.get(c), info[c]) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Not available:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def to_csv(rows: Rows, info: Mapping[str, MetricInfo] = METRIC_INFO) -> str:
    """CSV with metric keys as columns and full precision; missing values are empty cells."""
    cols = columns(rows, info)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", *cols])
    for name, values in rows.items():
        writer.writerow([name, *("" if values.get(c) is None else repr(values[c])
                                 for c in cols)])
    return buf.getvalue()


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                  "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "\\": r"\textbackslash{}", "µ": r"$\mu$", "↑": r"$\uparrow$",
                  "↓": r"$\downarrow$", "→": r"$\rightarrow$"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(rows: Rows, info: Mapping[str, MetricInfo] = METRIC_INFO,
             caption: str = "") -> str:
    """A ``booktabs`` LaTeX table; the best value of each column is bold."""
    cols = columns(rows, info)
    best: dict[str, float] = {}
    for c in cols:
        vals = [v[c] for v in rows.values() if v.get(c) is not None]
        if vals:
            key = {"higher": lambda x: -x, "lower": lambda x: x, "one": lambda x: abs(x - 1.0),
                   "zero": abs}[info[c].better]
            best[c] = min(vals, key=key)
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * len(cols) + "}",
             r"\toprule",
             " & ".join([""] + [_latex_escape(f"{info[c].label} {info[c].arrow}")
                                for c in cols]) + r" \\", r"\midrule"]
    for name, values in rows.items():
        cells = []
        for c in cols:
            v = values.get(c)
            cell = format_value(v, info[c], "--")
            cells.append(rf"\textbf{{{cell}}}" if v is not None and v == best.get(c) else cell)
        lines.append(" & ".join([_latex_escape(name)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_latex_escape(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def safe_name(text: str) -> str:
    """File-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "dataset"


def write_tables(results: Sequence[Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``<dataset>.md/.csv/.tex`` (and ``<dataset>_uncertainty.*``) per dataset.

    Returns:
        The written files.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    notes = unavailable_notes(results)
    unc = uncertainty_data(results)
    for ds, rows in table_data(results).items():
        stem = safe_name(ds)
        tables = [(stem, rows, METRIC_INFO, notes.get(ds, []))]
        if ds in unc:
            tables.append((f"{stem}_uncertainty", unc[ds], UNCERTAINTY_INFO, []))
        for name, data, info, ds_notes in tables:
            for suffix, text in ((".md", to_markdown(data, info, ds_notes)),
                                 (".csv", to_csv(data, info)),
                                 (".tex", to_latex(data, info, caption=ds))):
                path = out_dir / f"{name}{suffix}"
                atomic_write_text(path, text)
                written.append(path)
    return written
