"""The self-contained HTML report, rendered from results JSON only."""

from __future__ import annotations

import re
import shutil

import pytest

from hazematching.report import render_report


def test_report_is_self_contained(results_files, tmp_path):
    out = render_report(results_files, tmp_path / "rep", title="Toy <eval>")
    page = out.read_text()
    assert out.name == "report.html"
    assert "<title>Toy &lt;eval&gt;</title>" in page
    # Every image is embedded; nothing is loaded from elsewhere.
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 4  # perception–distortion, calibration, two galleries
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "Metrics not computed" in page and "missing pretrained weight" in page
    assert "good (MMSE)" in page and "ENCE" in page
    assert (tmp_path / "rep" / "tables" / "toy.tex").is_file()
    assert (tmp_path / "rep" / "figures" / "toy_calibration.png").is_file()


def test_rerender_from_copied_results(results_files, tmp_path):
    """Re-rendering needs only the JSON files (and galleries next to them)."""
    copies = []
    for p in results_files:
        dst = tmp_path / "copy" / p.parent.name
        shutil.copytree(p.parent, dst)
        copies.append(dst / p.name)
    first = render_report(copies, tmp_path / "a").read_text()
    second = render_report(copies, tmp_path / "b").read_text()
    assert first.count("<table>") == second.count("<table>") == 2
    (copies[0].parent / "gallery.npz").unlink()
    with pytest.raises(ValueError, match="gallery.npz"):
        render_report(copies, tmp_path / "c")


def test_no_results_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no results"):
        render_report([], tmp_path)
