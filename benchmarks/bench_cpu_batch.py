"""Per-pixel cost of one velocity-network call against tile size and batch, interleaved in one run.

Times the network forward (inference mode, channels-last, as the predictor runs it) for each
``SIDExBATCH`` case in turns, so that a busy machine slows every case alike, and prints the median
µs per tile pixel and its ratio to the first case. This is the measurement behind
``hazematching.predict.CPU_BATCH_PIXELS``: on a CPU, calls of many large tiles cost more per pixel
(their activations are mapped and faulted in afresh at every call). ``--compile`` also times the
network under ``torch.compile`` (inductor), interleaved with the eager calls.

Usage:
    python benchmarks/bench_cpu_batch.py 240x8 240x2 240x1 128x4 368x1
    python benchmarks/bench_cpu_batch.py --width half --threads 1 240x8 240x1 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hazematching.config import ModelConfig
from hazematching.methods.hazematching import HazeMatching

#: Networks to time: the default, and the half-width one bench_fast_posterior.py trains.
WIDTHS = {"full": {}, "half": {"network": {"model_channels": 16, "channel_mult": [1, 2, 2, 4],
                                           "attention_downsample": [8]}}}


def parse_case(text: str) -> tuple[int, int]:
    """'240x8' -> (tile side 240, batch 8)."""
    try:
        side, batch = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIDExBATCH such as 240x8, got {text!r}"
                                         ) from None
    if side < 1 or batch < 1:
        raise argparse.ArgumentTypeError(f"side and batch must be positive, got {text!r}")
    return side, batch


def per_pixel_us(net: torch.nn.Module, cases: list[tuple[int, int]], in_channels: int,
                 rounds: int, compiled: torch.nn.Module | None = None
                 ) -> dict[str, dict[tuple[int, int], list[float]]]:
    """µs per tile pixel of each (side, batch) case, `rounds` interleaved calls each:
    ``{"eager": {case: [µs, …]}, "compiled": {…}}`` (compiled only when given)."""
    nets = {"eager": net} | ({"compiled": compiled} if compiled is not None else {})
    inputs = {c: (torch.full((c[1],), 0.3),
                  torch.randn(c[1], in_channels + 1, c[0], c[0]).contiguous(
                      memory_format=torch.channels_last)) for c in cases}
    out: dict[str, dict[tuple[int, int], list[float]]] = {k: {c: [] for c in cases}
                                                          for k in nets}
    with torch.inference_mode():
        for f in nets.values():  # warm-up (and compilation) outside the timings
            for c in cases:
                f(*inputs[c])
        for _ in range(rounds):
            for c in cases:
                for name, f in nets.items():
                    t0 = time.perf_counter()
                    f(*inputs[c])
                    out[name][c].append((time.perf_counter() - t0) / (c[0] ** 2 * c[1]) * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="+", type=parse_case, help="SIDExBATCH, e.g. 240x8")
    ap.add_argument("--width", choices=sorted(WIDTHS), default="full")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig.from_dict(WIDTHS[args.width])
    net = HazeMatching(cfg).eval().to(memory_format=torch.channels_last).net
    compiled = torch.compile(net, dynamic=False) if args.compile else None
    res = per_pixel_us(net, args.cases, cfg.in_channels, args.rounds, compiled)
    base = statistics.median(res["eager"][args.cases[0]])
    print(f"{args.width}-width network, {torch.get_num_threads()} thread(s), median of "
          f"{args.rounds} interleaved calls")
    print("| tile | batch | pixels per call | eager µs/px | vs first | compiled µs/px |")
    print("|---:|---:|---:|---:|---:|---:|")
    for c in args.cases:
        eager = statistics.median(res["eager"][c])
        comp = f"{statistics.median(res['compiled'][c]):.3f}" if "compiled" in res else "—"
        print(f"| {c[0]} | {c[1]} | {c[0] ** 2 * c[1]:,} | {eager:.3f} | {eager / base:.3f} "
              f"| {comp} |")


if __name__ == "__main__":
    main()
