"""The evaluate and report commands of the hazematching CLI."""

from __future__ import annotations

import numpy as np
import pytest
import typer
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from hazematching.cli import app as cli_app
from hazematching.io import write_tiff


@pytest.fixture
def app() -> typer.Typer:
    return cli_app


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        t = gaussian_filter(rng.random((64, 64)), 2).astype(np.float32)
        write_tiff(tmp_path / "targets" / f"cell{i}.tif", np.stack([t, t * 0.5]), "CYX")
        s = (t[None] + rng.normal(0, 0.01, (3, 64, 64))).astype(np.float32)
        write_tiff(tmp_path / "preds" / f"cell{i}_mmse.tif", s.mean(axis=0), "YX")
        write_tiff(tmp_path / "preds" / f"cell{i}_samples.tif", s, "SYX")
    return tmp_path


def test_evaluate_then_report(app, folders, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(folders / "no_weights"))
    runner = CliRunner()
    out = folders / "rep"
    res = runner.invoke(app, ["evaluate", str(folders / "preds"), str(folders / "targets"),
                              "--out", str(out), "--metrics", "psnr,ssim",
                              "--metrics", "lpips", "--metrics", "uncertainty",
                              "--pixel-size", "0.1", "--method", "HM"])
    assert res.exit_code == 0, res.output
    assert "not computed: lpips" in res.output and "alexnet-owt-7be5be79.pth" in res.output
    assert (out / "results.json").is_file() and (out / "report.html").is_file()
    assert "HM (MMSE)" in (out / "tables" / "targets.md").read_text()
    res = runner.invoke(app, ["report", str(out / "results.json"), "--out", str(folders / "r2"),
                              "--title", "again"])
    assert res.exit_code == 0, res.output
    assert "<title>again</title>" in (folders / "r2" / "report.html").read_text()


def test_errors_exit_with_message(app, folders):
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(folders / "missing"), str(folders / "targets"),
                              "--out", str(folders / "rep")])
    assert res.exit_code == 2
    assert "missing: no such prediction folder" in res.output
    res = runner.invoke(app, ["evaluate", str(folders / "preds"), str(folders / "targets"),
                              "--out", str(folders / "rep"), "--metrics", "sharpness"])
    assert res.exit_code == 2 and "unknown metric" in res.output
    assert not (folders / "rep" / "results.json").exists()
    res = runner.invoke(app, ["report", str(folders / "nope.json"), "--out", str(folders)])
    assert res.exit_code == 2 and "no such results file" in res.output
