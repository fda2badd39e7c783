"""benchmarks/bench_quality_levers.py on tiny trained models and real files."""

import json
import math
from pathlib import Path

import pytest
from helpers import load_benchmark, make_pairs, write_paper_layout

from hazematching.api import Model
from hazematching.config import ModelConfig
from hazematching.distill import distill


def load_script():
    return load_benchmark("bench_quality_levers")


def test_levers_table_for_a_flow_and_a_regression(tmp_path):
    from conftest import TINY

    bench = load_script()
    dirs = {}
    for method in ("hazematching", "regression"):
        cfg = ModelConfig.from_dict({**TINY, "method": method}).with_overrides(
            {"training.calibrate": False, "training.epochs": 1})
        dirs[method] = tmp_path / method
        Model(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=dirs[method])
    dirs["distilled"] = tmp_path / "distilled"
    distill(dirs["hazematching"], make_pairs(3), make_pairs(2, seed=5), steps=2,
            out_dir=dirs["distilled"],
            overrides={"training.max_steps": 1, "training.calibrate": False})
    test = write_paper_layout(tmp_path / "test", make_pairs(2, seed=7))
    val = write_paper_layout(tmp_path / "val", make_pairs(2, seed=8))
    out = tmp_path / "rows.json"
    bench.main(["--test", str(test), "--model", str(dirs["hazematching"]), "--model",
                str(dirs["regression"]), "--model", str(dirs["distilled"]), "--sampler", "euler:2", "--sampler", "midpoint:3",
                "--samples", "4", "--val", str(val), "--out", str(out)])
    rows = json.loads(out.read_text())
    assert [(Path(r["model"]).name, r["sampler"]) for r in rows] == [
        ("hazematching", "euler:2"), ("hazematching", "midpoint:3"), ("regression", "—"),
        ("distilled", "euler:3 (distilled)")]  # one row: its own grid, whatever was asked
    one_step, midpoint, regression, distilled = rows
    # One Euler step from x0 ends at x0 + v(0, x0, y): the samples are the one-call estimates.
    assert one_step["mmse"] == one_step["mmse_t0"]
    assert midpoint["mmse_t0"] == one_step["mmse_t0"]  # same noise, same first call
    for r in (one_step, midpoint, distilled):
        assert r["images"] == 2 and all(math.isfinite(r[k]) for k in
                                        ("mmse", "sample", "sample_hf"))
        assert r["sample_hf"] > 0
        assert r["ence"] >= 0 and -1 <= r["spearman"] <= 1
    assert set(regression) == {"model", "sampler", "images", "mmse", "seconds"}


def test_levers_refuse_bad_arguments(tmp_path):
    bench = load_script()
    with pytest.raises(SystemExit):
        bench.main(["--test", str(tmp_path), "--model", str(tmp_path), "--samples", "3"])
    with pytest.raises(ValueError, match="solver"):
        bench.main(["--test", str(tmp_path), "--model", str(tmp_path), "--sampler", "rk4:5"])
