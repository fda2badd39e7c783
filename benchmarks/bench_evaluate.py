"""Time :func:`hazematching.metrics.evaluate_arrays` on synthetic data and print a table.

Default workload: ten 512×512 images with 50 posterior samples each, a std map and a
widefield input per image (the input is scored as a baseline too). LPIPS/FID run only if their
weights are found (see hazematching.metrics.perceptual); otherwise they are reported as
unavailable and take no time.

    PYTHONPATH=src python benchmarks/bench_evaluate.py [--images 10] [--samples 50] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import time

T_START = time.perf_counter()  # imports below are part of the measured time
# ruff: noqa: E402

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from hazematching.metrics import evaluate_arrays

T_IMPORT = time.perf_counter() - T_START


def synthetic(n: int, s: int, size: int, seed: int = 0):
    """Targets (blob-like structure), noisy samples around a slightly blurred target, their
    std, their mean (MMSE) and a strongly blurred widefield input; float32."""
    rng = np.random.default_rng(seed)
    targets, samples, inputs = [], [], []
    for _ in range(n):
        t = gaussian_filter(rng.random((size, size)), 2.0) * 2000 + 100
        targets.append(t.astype(np.float32))
        base = gaussian_filter(t, 0.7)
        samples.append((base[None] + rng.normal(0, 15, (s, size, size))).astype(np.float32))
        inputs.append((gaussian_filter(t, 4.0) + 300).astype(np.float32))
    mmse = [x.mean(axis=0) for x in samples]
    std = [x.std(axis=0) for x in samples]
    return targets, mmse, samples, std, inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--perceptual-samples", type=int, default=5,
                    help="samples per image for LPIPS/FID/FSIM")
    ap.add_argument("--no-input", action="store_true", help="skip the widefield baseline")
    ap.add_argument("--weights-dir", default=None)
    args = ap.parse_args()

    targets, mmse, samples, std, inputs = synthetic(args.images, args.samples, args.size)
    t0 = time.perf_counter()
    res = evaluate_arrays(mmse, targets, samples, std,
                          input=None if args.no_input else inputs,
                          weights_dir=args.weights_dir, pixel_size_um=0.1,
                          max_perceptual_samples=args.perceptual_samples)
    total = time.perf_counter() - t0

    print(f"workload: {args.images} images {args.size}x{args.size}, {args.samples} samples each"
          f"{'' if args.no_input else ', + widefield input baseline'}; "
          f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'step':<14}{'seconds':>10}")
    for step, sec in sorted(res["timings_s"].items(), key=lambda kv: -kv[1]):
        print(f"{step:<14}{sec:>10.2f}")
    print(f"{'evaluate total':<14}{total:>10.2f}")
    print(f"{'imports':<14}{T_IMPORT:>10.2f}")
    for metric, reason in res["unavailable"].items():
        print(f"unavailable: {metric}: {reason.splitlines()[0]}")


if __name__ == "__main__":
    main()
