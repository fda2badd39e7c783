"""Tables from results: rows per method/variant, formats, missing values, notes."""

from __future__ import annotations

import csv
import io

import pytest

from hazematching.metrics.evaluate import load_results
from hazematching.report import tables as tb


@pytest.fixture
def results(results_files):
    return [load_results(p) for p in results_files]


def test_table_data_rows(results):
    data = tb.table_data(results)
    assert list(data) == ["toy"]
    rows = data["toy"]
    assert set(rows) == {"good (MMSE)", "good (sample)", "blurry (MMSE)", "blurry (sample)",
                         tb.INPUT_ROW}
    assert rows["good (MMSE)"]["psnr"] == results[0]["variants"]["mmse"]["dataset"]["psnr"]
    assert rows["good (MMSE)"]["psnr"] > rows["blurry (MMSE)"]["psnr"]


def test_duplicate_labels_are_rejected(results):
    with pytest.raises(ValueError, match="method='good'"):
        tb.table_data([results[0], results[0]])


def test_markdown_csv_latex():
    rows = {"a (MMSE)": {"psnr": 30.123456, "lpips": None, "power_ratio": 0.9},
            "b_x & y": {"psnr": 28.0, "lpips": 0.2, "power_ratio": 1.05}}
    md = tb.to_markdown(rows, notes=["a: lpips — missing weights"])
    assert "| PSNR (dB) ↑ | LPIPS ↓ | HF power ratio →1 |" in md
    assert "| a (MMSE) | 30.12 | — | 0.900 |" in md
    assert "Not available:\n- a: lpips — missing weights" in md
    parsed = list(csv.reader(io.StringIO(tb.to_csv(rows))))
    assert parsed[0] == ["row", "psnr", "lpips", "power_ratio"]
    assert parsed[1] == ["a (MMSE)", "30.123456", "", "0.9"]
    tex = tb.to_latex(rows, caption="toy_set")
    assert r"b\_x \& y" in tex and r"toy\_set" in tex
    assert r"\textbf{30.12}" in tex  # higher PSNR is better
    assert r"\textbf{0.200}" in tex and "--" in tex  # lower LPIPS; missing value
    assert r"\textbf{1.050}" in tex  # power ratio: closest to 1
    assert r"$\uparrow$" in tex


def test_write_tables(results, tmp_path):
    written = tb.write_tables(results, tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(f"toy{s}{e}" for s in ("", "_uncertainty")
                           for e in (".md", ".csv", ".tex"))
    md = (tmp_path / "toy.md").read_text()
    assert "lpips — missing pretrained weight file(s) in /x: a.pth (good, blurry)" in md
    assert "ENCE" in (tmp_path / "toy_uncertainty.md").read_text()


def test_unavailable_notes_group_methods_with_one_reason():
    results = [{"dataset": "d", "method": m, "unavailable": {"fid": "no weights\n  x.pth"}}
               for m in ("a", "b")]
    results.append({"dataset": "d", "method": "c", "unavailable": {"fid": "other"}})
    assert tb.unavailable_notes(results) == {"d": ["fid — no weights x.pth (a, b)",
                                                   "fid — other (c)"]}
