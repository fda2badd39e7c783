"""Figures: axis choice, PNG output, gallery layout."""

from __future__ import annotations

import numpy as np
import pytest

from hazematching.metrics.evaluate import load_gallery, load_results
from hazematching.report import plots
from hazematching.report.tables import table_data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_realism_axis_prefers_lpips_then_fid_then_power():
    rows = {"a": {"psnr": 1.0, "lpips": 0.1, "fid": 3.0, "power_ratio": 1.0},
            "b": {"psnr": 2.0, "lpips": None, "fid": 2.0, "power_ratio": 0.5}}
    assert plots.realism_axis(rows)[0] == "fid"
    rows["b"]["fid"] = None
    assert plots.realism_axis(rows)[0] == "power_ratio"
    rows["b"]["power_ratio"] = None
    assert plots.realism_axis(rows) is None
    assert plots.perception_distortion_figure(rows) is None


def test_perception_distortion_png(results_files, tmp_path):
    rows = table_data([load_results(p) for p in results_files])["toy"]
    fig = plots.perception_distortion_figure(rows, title="toy")
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("PSNR")
    # every row is a numbered point, named in the legend
    assert [t.get_text() for t in ax.texts] == [str(k + 1) for k in range(len(rows))]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f"{k + 1}. {label}" for k, label in enumerate(rows)]
    path = plots.save_png(fig, tmp_path / "pd.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_calibration_png(results_files, tmp_path):
    curves = {p.parent.name: load_results(p)["uncertainty"]["curve"] for p in results_files}
    path = plots.calibration_png(curves, tmp_path / "cal.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_gallery_panels(results_files, tmp_path):
    panels = load_gallery(results_files[0].parent / "gallery.npz")
    fig = plots.gallery_figure(panels, title="good")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["widefield input", "target", "MMSE", "sample 1", "sample 2", "sample 3",
                      "predicted std"]
    assert plots.save_png(fig, tmp_path / "g.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="'target' and 'mmse'"):
        plots.gallery_figure({"target": np.zeros((4, 4))})
