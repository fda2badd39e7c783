"""The benchmark runner end to end on tiny data: two methods, one report, resumable."""

import json

import pytest
import yaml
from helpers import make_pairs, write_paper_layout
from typer.testing import CliRunner

from hazematching.benchmark import BenchmarkConfig
from hazematching.cli import app


@pytest.fixture
def bench_file(tmp_path):
    from conftest import TINY

    root = tmp_path / "data"
    write_paper_layout(root / "train", make_pairs(3, size=64, seed=1))
    write_paper_layout(root / "val", make_pairs(2, size=64, seed=2))
    write_paper_layout(root / "test", make_pairs(2, size=64, seed=3))
    cfg = {
        "dataset": "data", "name": "tiny", "out": "bench",
        "budget": {"training.epochs": 1},
        "methods": [
            {"method": "hazematching", "label": "HazeMatching", "set": {
                k: v for sec, d in TINY.items() for k, v in
                ((f"{sec}.{kk}", vv) for kk, vv in d.items())}},
            {"method": "richardson_lucy", "label": "RL"},
        ],
        "evaluation": {"n_samples": 3, "metrics": ["psnr", "ri_psnr", "ssim", "power_ratio",
                                                   "uncertainty"]},
    }
    p = tmp_path / "bench.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.slow
def test_benchmark_runs_every_method_and_reports(bench_file, tmp_path):
    r = CliRunner().invoke(app, ["benchmark", str(bench_file)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "bench"
    assert (out / "report" / "report.html").exists()
    for label in ("HazeMatching", "RL"):
        res = json.loads((out / "results" / label / "results.json").read_text())
        assert res["method"] == label and res["dataset"] == "tiny"
        assert len(list((out / "predictions" / label).glob("*_mmse.tif"))) == 2
    assert (out / "predictions" / "HazeMatching" / "img0_samples.tif").exists()
    assert "HazeMatching" in r.output and "RL" in r.output
    stamp = (out / "results" / "RL" / "results.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["benchmark", str(bench_file)])
    assert again.exit_code == 0 and "reusing the trained model" in again.output
    assert (out / "results" / "RL" / "results.json").stat().st_mtime_ns == stamp


def test_benchmark_config_errors(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump({"dataset": "d", "out": "o", "methods": [
        {"method": "rcan"}, {"method": "rcan"}]}))
    with pytest.raises(ValueError, match="labels must be unique, repeated: rcan"):
        BenchmarkConfig.from_yaml(p)
    p.write_text(yaml.safe_dump({"dataset": "d", "out": "o", "methods": [], "extra": 1}))
    with pytest.raises(ValueError, match="extra"):
        BenchmarkConfig.from_yaml(p)
    p.write_text(yaml.safe_dump({"dataset": str(tmp_path / "none"), "out": "o",
                                 "methods": [{"method": "rcan"}]}))
    r = CliRunner().invoke(app, ["benchmark", str(p)])
    assert r.exit_code == 2 and "no such folder" in r.output
