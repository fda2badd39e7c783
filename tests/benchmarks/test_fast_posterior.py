"""benchmarks/bench_fast_posterior.py: which model and grid each lever runs on."""

import pytest
from helpers import load_benchmark

from hazematching.api import Model
from hazematching.config import ModelConfig
from hazematching.sampling import network_calls


def test_distilled_levers_run_on_the_distilled_model_and_its_grid():
    from conftest import TINY

    bench = load_benchmark("bench_fast_posterior")
    model = Model(ModelConfig.from_dict(TINY))
    distilled = Model(ModelConfig.from_dict(TINY).with_overrides({
        "method_options.distilled_steps": 3, "sampling.solver": "euler",
        "sampling.n_time_points": 4}))
    lever = bench.LEVERS["distilled, K=16 antithetic"]
    m, over = bench.for_lever(model, distilled, lever)
    assert m is distilled and "distilled" not in over
    cfg = bench.lever_config(m, over)
    assert (cfg.n_samples, cfg.antithetic) == (16, True)
    assert network_calls(cfg.solver, cfg.n_time_points) == 3  # the work ratio counts these
    plain = bench.LEVERS["balanced preset"]
    assert bench.for_lever(model, distilled, plain) == (model, plain)
    with pytest.raises(SystemExit, match="--distilled"):
        bench.for_lever(model, None, lever)
