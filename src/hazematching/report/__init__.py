"""Reports from evaluation results: tables (Markdown/CSV/LaTeX), PNG figures and one HTML page.

Everything is rendered from the JSON written by :mod:`hazematching.metrics.evaluate`, so a
report can be re-rendered (or several runs combined) without recomputing metrics.
"""

from hazematching.report.html import render_report
from hazematching.report.plots import (
                                       calibration_png,
                                       gallery_figure,
                                       perception_distortion_figure,
                                       save_png,
)
from hazematching.report.tables import (
                                       table_data,
                                       to_csv,
                                       to_latex,
                                       to_markdown,
                                       uncertainty_data,
                                       write_tables,
)

__all__ = [
    "calibration_png", "gallery_figure", "perception_distortion_figure", "render_report",
    "save_png", "table_data", "to_csv", "to_latex", "to_markdown", "uncertainty_data",
    "write_tables",
]
