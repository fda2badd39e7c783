"""The benchmark runner: end to end on tiny data (two methods, one report, resumable) and its
training budgets (steps, samples, minutes; shared and per method; seeds)."""

import json

import pytest
import torch
import yaml
from helpers import make_pairs, write_paper_layout
from typer.testing import CliRunner

from hazematching.api import Model
from hazematching.benchmark import BenchmarkConfig, entry_config
from hazematching.cli import app


def _flat(sections: dict) -> dict:
    """{"training": {"epochs": 2}} → {"training.epochs": 2}."""
    return {f"{sec}.{k}": v for sec, d in sections.items() for k, v in d.items()}


@pytest.fixture
def bench_file(tmp_path):
    from conftest import TINY

    root = tmp_path / "data"
    write_paper_layout(root / "train", make_pairs(3, size=64, seed=1))
    write_paper_layout(root / "val", make_pairs(2, size=64, seed=2))
    write_paper_layout(root / "test", make_pairs(2, size=64, seed=3))
    cfg = {
        "dataset": "data", "name": "tiny", "out": "bench",
        "budget": {"steps": 3},
        "methods": [
            {"method": "hazematching", "label": "HazeMatching", "set": _flat(TINY)},
            # The trained model with other inference settings.
            {"method": "hazematching", "label": "HM-2", "model": "bench/models/HazeMatching",
             "set": {"sampling.n_time_points": 2}},
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
    for label in ("HazeMatching", "HM-2", "RL"):
        res = json.loads((out / "results" / label / "results.json").read_text())
        assert res["method"] == label and res["dataset"] == "tiny"
        assert len(list((out / "predictions" / label).glob("*_mmse.tif"))) == 2
    assert (out / "predictions" / "HazeMatching" / "img0_samples.tif").exists()
    meta = json.loads((out / "models" / "HazeMatching" / "model.json").read_text())
    assert meta["steps"] == 3  # the step budget, not the config's epochs
    # The reconfigured copy has its own directory and calibration; the original is unchanged.
    copy = json.loads((out / "models" / "HM-2" / "model.json").read_text())
    assert copy["calibration"] is not None and copy["calibration"] != meta["calibration"]
    for name, points in (("HazeMatching", 4), ("HM-2", 2)):
        config = yaml.safe_load((out / "models" / name / "config.yaml").read_text())
        assert config["sampling"]["n_time_points"] == points
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


def _bench(tmp_path, **fields) -> BenchmarkConfig:
    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump({"dataset": "d", "out": "o", **fields}))
    return BenchmarkConfig.from_yaml(p)


def test_budgets_become_training_limits(tmp_path):
    from conftest import TINY

    gan = {"method_options.n_feats": 4, "method_options.n_blocks": 1,
           "method_options.growth": 4, "method_options.disc_layers": 2}
    bench = _bench(tmp_path, set=_flat(TINY), budget={"steps": 40, "minutes": 30}, methods=[
        {"method": "regression"},
        {"method": "rcan", "budget": {"samples": 10}, "set": {"training.batch_size": 3}},
        {"method": "gan", "set": gan},
        {"method": "indi", "budget": {"minutes": 2}}])
    limits = {e.name: entry_config(bench, e).training for e in bench.methods}
    assert {n: (t.max_steps, t.max_minutes) for n, t in limits.items()} == {
        "regression": (40, 30), "rcan": (4, 30),  # ceil(10 samples / batch 3)
        "gan": (80, 30),  # Lightning counts the generator's and the critic's steps
        "indi": (40, 2)}
    assert all(t.epochs >= 10**6 for t in limits.values())  # the budget, not epochs, stops
    # Without a budget the configs' own limits stay.
    plain = _bench(tmp_path, set={"training.epochs": 7}, methods=[{"method": "regression"}])
    t = entry_config(plain, plain.methods[0]).training
    assert (t.epochs, t.max_steps, t.max_minutes) == (7, -1, None)


def test_a_step_budget_counts_batches_for_a_gan(tmp_path):
    from conftest import TINY

    bench = _bench(tmp_path, budget={"steps": 3}, methods=[{"method": "gan", "set": {
        **_flat(TINY), "training.progress_bar": False, "training.accelerator": "cpu",
        "method_options.n_feats": 4, "method_options.n_blocks": 1,
        "method_options.growth": 4, "method_options.disc_layers": 2}}])
    model = Model(entry_config(bench, bench.methods[0])).fit(make_pairs(3), out_dir=tmp_path / "m")
    assert model.training_summary["steps"] == 6
    state = torch.load(tmp_path / "m" / "checkpoints" / "last.ckpt", weights_only=True)
    assert [opt["state"][0]["step"].item() for opt in state["optimizer_states"]] == [3, 3]


def test_seeds_expand_into_labelled_runs(tmp_path):
    bench = _bench(tmp_path, methods=[{"method": "rcan", "label": "RCAN", "seeds": [0, 1]},
                                      {"method": "regression"}])
    assert [(m.name, m.set) for m in bench.methods] == [
        ("RCAN (seed 0)", {"training.seed": 0}), ("RCAN (seed 1)", {"training.seed": 1}),
        ("regression", {})]


@pytest.mark.parametrize(("fields", "message"), [
    ({"budget": {"training.max_minutes": 4}}, "budget takes steps, samples and minutes"),
    ({"budget": {"steps": 5, "samples": 80}}, "steps or samples, not both"),
    ({"budget": {"steps": 0}}, "budget.steps"),
    ({"methods": [{"method": "indi", "model": "m", "seeds": [1, 2]}]}, "no training seeds"),
])
def test_bad_budgets_fail_clearly(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        _bench(tmp_path, **{"methods": [{"method": "rcan"}], **fields})


@pytest.mark.parametrize("name", ["simulated", "ranking", "quality_real"])
def test_the_shipped_configs_are_valid(name):
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "configs" / f"{name}.yaml"
    bench = BenchmarkConfig.from_yaml(path)
    labels = [m.name for m in bench.methods]
    assert {"SIFM (0.0, 0.0)", "SIFM (0.0, 0.1)", "SIFM (0.1, 0.1)", "InDI (1 step)",
            "InDI (20 steps)"} <= set(labels)
    trained = {m.method for m in bench.methods}
    assert {"mimo_unet", "mprnet", "restormer", "lvae"} <= trained
    for m in bench.methods:
        if m.model is None:
            entry_config(bench, m)  # raises on any invalid field
        else:  # reuses a model trained earlier in the same run
            assert m.model.parent.parent == bench.out and m.model.name in labels
