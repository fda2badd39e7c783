"""benchmarks/bench_cpu_batch.py: case parsing, and interleaved timings of a real tiny network."""

import argparse
import subprocess
import sys

import pytest
import torch
from helpers import BENCHMARKS, load_benchmark

from hazematching.config import ModelConfig
from hazematching.methods.hazematching import HazeMatching

SCRIPT = BENCHMARKS / "bench_cpu_batch.py"


def load_script():
    return load_benchmark("bench_cpu_batch")


def test_cases_parse_and_bad_ones_say_what_was_expected():
    bench = load_script()
    assert bench.parse_case("240x8") == (240, 8)
    for bad in ("240", "x8", "240x0", "a x b"):
        with pytest.raises(argparse.ArgumentTypeError, match="240x8|positive"):
            bench.parse_case(bad)


def test_every_case_is_timed_in_every_round():
    bench = load_script()
    cfg = ModelConfig.from_dict({"network": {"model_channels": 8, "channel_mult": [1, 2],
                                             "attention_downsample": [2]}})
    net = HazeMatching(cfg).eval().to(memory_format=torch.channels_last).net
    res = bench.per_pixel_us(net, [(16, 2), (32, 1)], cfg.in_channels, rounds=3)
    assert list(res) == ["eager"]
    assert {c: len(v) for c, v in res["eager"].items()} == {(16, 2): 3, (32, 1): 3}
    assert all(us > 0 for v in res["eager"].values() for us in v)


def test_command_line_prints_one_row_per_case():
    out = subprocess.run([sys.executable, str(SCRIPT), "--width", "half", "--threads", "1",
                          "--rounds", "1", "32x2", "16x1"], capture_output=True, text=True,
                         check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| 32 |") or
            line.startswith("| 16 |")]
    assert len(rows) == 2 and "| 2,048 |" in rows[0] and "| 1.000 |" in rows[0]
