"""Throughput and memory of training and sampling on this machine, in one run.

Measures, for the default (paper) network unless told otherwise:
  (a) training throughput, patches/s at 128×128 (forward + backward + Adam step);
  (b) sampling throughput for a 1024×1024 image: network evaluations/s and output
      megapixels/s per posterior sample (tiled, Euler, the configured time points);
  (c) the network's achieved GFLOP/s, against a plain fp32 matrix multiply timed in the same run
      (the ratio is the figure of merit: it does not depend on how fast the machine is);
  (d) peak memory (GPU: torch's peak allocation; CPU: the process's peak resident size), and
      the peak of the sampler's own arrays for 4 vs 64 samples (must not grow with samples).

Usage:
    python benchmarks/bench_throughput.py              # full sizes (minutes on a CPU)
    python benchmarks/bench_throughput.py --size 256   # a quicker CPU run
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from hazematching.config import ModelConfig
from hazematching.methods import build_method
from hazematching.predict import predict_planes, resolve_device


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(dev: torch.device, n: int = 2048, reps: int = 5) -> float:
    """Achieved fp32 GFLOP/s of an n×n×n matrix multiply (the practical peak reference)."""
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    a @ b
    _sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(dev)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def forward_flops(method, batch: int, size: int, dev: torch.device) -> float:
    """FLOPs (2 per multiply-add) of one velocity-network call on (batch, C, size, size)."""
    x = torch.randn(batch, 1 + method.config.in_channels, size, size, device=dev)
    t = torch.full((batch,), 0.5, device=dev)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), \
            FlopCounterMode(display=False) as fc, torch.no_grad():
        method.net(t, x)
    return float(fc.get_total_flops())


def train_throughput(method, batch: int, size: int, dev: torch.device, steps: int) -> float:
    """Training patches/s (forward, backward, Adam), fp32 on CPU, bf16 autocast on GPU."""
    opt = torch.optim.Adam(method.parameters(), lr=1e-4)
    y = torch.randn(batch, 1, size, size, device=dev)
    c = torch.randn(batch, 1, size, size, device=dev)
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
           else torch.autocast("cpu", enabled=False))
    for i in range(steps + 1):
        if i == 1:
            _sync(dev)
            t0 = time.perf_counter()
        with ctx:
            loss = method.training_loss(y, c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(dev)
    return batch * steps / (time.perf_counter() - t0)


def sampler_peak_bytes(method, size: int, n_samples: int) -> int:
    """Peak bytes of numpy arrays the sampler allocates (tracemalloc), network excluded."""
    x = np.zeros((1, 1, size, size), np.float32)
    tracemalloc.start()
    predict_planes(method, x, method.config.sampling, n_samples=n_samples, device="cpu")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="sampled image side (px)")
    ap.add_argument("--n-time-points", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None, help="sampling batch")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    dev = resolve_device(args.device)
    cfg = ModelConfig().with_overrides({
        "sampling.n_time_points": args.n_time_points, "sampling.n_samples": 1,
        "sampling.batch_size": args.batch_size or (64 if dev.type == "cuda" else 16)})
    method = build_method(cfg).to(dev)
    rows: list[tuple[str, str]] = [("device", str(dev)),
                                   ("torch threads", str(torch.get_num_threads()))]

    mm = matmul_gflops(dev)
    rows.append(("fp32 matmul 2048³", f"{mm:,.1f} GFLOP/s"))

    pps = train_throughput(method.train(), args.train_batch, 128, dev, args.train_steps)
    rows.append(("training, 128×128, batch %d" % args.train_batch, f"{pps:,.2f} patches/s"))

    method.eval()
    s = cfg.sampling
    flops_tile = forward_flops(method, 1, s.tile_size, dev)
    img = np.random.default_rng(0).normal(size=(1, 1, args.size, args.size)).astype(np.float32)
    calls = []
    orig = method.net.forward
    method.net.forward = lambda t, x: (calls.append(x.shape[0]), orig(t, x))[1]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(dev)
    t0 = time.perf_counter()
    predict_planes(method, img, s, n_samples=1, device=dev)
    _sync(dev)
    dt = time.perf_counter() - t0
    method.net.forward = orig
    tile_evals = sum(calls)
    rows += [
        (f"sampling {args.size}², 1 sample", f"{dt:,.1f} s, {tile_evals} tile evaluations "
                                              f"({s.tile_size}² tiles, {len(calls)} batches)"),
        ("network evaluations/s", f"{tile_evals / dt:,.1f} tiles/s"),
        ("output megapixels/s per sample", f"{args.size**2 / 1e6 / dt:.4f}"),
        ("network GFLOP/s (sampling)", f"{flops_tile * tile_evals / dt / 1e9:,.1f} "
                                       f"= {flops_tile * tile_evals / dt / 1e9 / mm:.2f}× matmul"),
        ("GFLOP per tile evaluation", f"{flops_tile / 1e9:.3f}"),
    ]
    if dev.type == "cuda":
        rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"))
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB
    rows.append(("peak process RSS", f"{rss_gib:.2f} GiB"))

    small = build_method(cfg.with_overrides({"sampling.n_time_points": 2, "network.channel_mult":
                                             [1, 2], "network.attention_downsample": [2],
                                             "network.model_channels": 8}))
    p4, p64 = sampler_peak_bytes(small, 512, 4), sampler_peak_bytes(small, 512, 64)
    rows.append(("sampler arrays peak, 512², 4 vs 64 samples",
                 f"{p4 / 2**20:.1f} MiB vs {p64 / 2**20:.1f} MiB (ratio {p64 / p4:.2f})"))

    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
