"""Training and sampler levers of issue 12, scored on held-out test pairs: one table, one run.

For every trained HazeMatching model given (e.g. trained with ``hazematching train … --set
training.t0_fraction=0.25``) and every sampler asked for, it draws K posterior samples per test
image in antithetic pairs (x0, −x0), the same noise for every model and sampler, and reports:

* the MMSE as the mean of the K samples, and as the mean of the K one-call estimates
  x0 + v(0, x0, y) (``sampling.mmse = 't0'``), range-invariant PSNR against the target;
* one sample's range-invariant PSNR and the samples' high-frequency power ratio (0.15–0.45
  cycles/px against the target's, → 1: the texture of a posterior sample);
* for a deterministic model (e.g. ``--method regression``), its prediction's PSNR.

Quick to run against ``bench_quality_real.py``: no calibration and no FRC, MS-SSIM or
uncertainty scores — that benchmark gives those for the chosen settings.

Usage:
    python benchmarks/bench_quality_levers.py --test runs/qr/data/test \\
        --model runs/levers/default --model runs/levers/t0_0.25 \\
        --model runs/qr/bench/models/U-Net \\
        --sampler euler:20 --sampler midpoint:10 --samples 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hazematching.api import load_model
from hazematching.config import SamplingConfig
from hazematching.data.pairs import load_pairs
from hazematching.metrics.fidelity import ri_psnr
from hazematching.metrics.spectral import band_power_ratio
from hazematching.predict import default_batch_size


def sampler(spec: str) -> SamplingConfig:
    """'solver:points[:schedule]', e.g. 'euler:20' or 'midpoint:10:late'."""
    solver, points, *schedule = spec.split(":")
    return SamplingConfig(solver=solver, n_time_points=int(points),
                          schedule=schedule[0] if schedule else "uniform")


def score(model_dir: Path, test: Path, samplers: list[str], k: int, n_images: int | None
          ) -> list[dict]:
    """One row per sampler (one for a deterministic model) of mean scores over the images."""
    model = load_model(model_dir)
    method, norm = model.method.eval(), model.normalizer
    pairs = load_pairs(test)
    count = len(pairs) if n_images is None else min(n_images, len(pairs))
    rows = []
    for spec in samplers if method.stochastic else ["—"]:
        settings = sampler(spec) if method.stochastic else None
        started, scores = time.perf_counter(), {}
        for i in range(count):
            cond = torch.from_numpy(norm.normalize_input(pairs.inputs[i])).float()[:1]
            target = norm.normalize_target(pairs.targets[i])[0]
            with torch.no_grad():
                if not method.stochastic:
                    scores.setdefault("mmse", []).append(
                        ri_psnr(method.predict_batch(cond).numpy()[0, 0], target))
                    continue
                half = torch.randn((k // 2, 1, *cond.shape[2:]),
                                   generator=torch.Generator().manual_seed(i))
                noise = torch.cat([half, -half])
                ends, first = [], []
                batch = default_batch_size(torch.device("cpu"), cond.shape[2] * cond.shape[3])
                for j in range(0, k, batch):
                    n = noise[j:j + batch]
                    end, estimate = method.posterior_batch(
                        cond.expand(len(n), -1, -1, -1), n, settings)
                    ends.append(end.numpy()[:, 0])
                    first.append(estimate.numpy()[:, 0])
            ends, first = np.concatenate(ends), np.concatenate(first)
            for name, value in (("mmse", ri_psnr(ends.mean(0), target)),
                                ("mmse_t0", ri_psnr(first.mean(0), target)),
                                ("sample", ri_psnr(ends[0], target)),
                                ("sample_hf", float(band_power_ratio(ends, target).mean()))):
                scores.setdefault(name, []).append(value)
        rows.append({"model": str(model_dir), "sampler": spec, "images": count,
                     **{n: round(float(np.mean(v)), 3) for n, v in scores.items()},
                     "seconds": round(time.perf_counter() - started)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=Path, required=True, help="Folder of test pairs.")
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="Trained model directory (repeatable).")
    parser.add_argument("--sampler", action="append", help="solver:points[:schedule] "
                        "(repeatable; default euler:20, the paper's, and midpoint:10).")
    parser.add_argument("--samples", type=int, default=8, help="K, even (antithetic pairs).")
    parser.add_argument("--images", type=int, help="Only the first N test images.")
    parser.add_argument("--out", type=Path, help="Also write the rows as JSON here.")
    args = parser.parse_args(argv)
    if args.samples < 2 or args.samples % 2:
        parser.error(f"--samples must be even and at least 2, got {args.samples}")
    samplers = args.sampler or ["euler:20", "midpoint:10"]
    for spec in samplers:
        sampler(spec)  # a bad spec fails before any model runs
    torch.manual_seed(0)
    rows = [r for m in args.model for r in score(m, args.test, samplers, args.samples,
                                                  args.images)]
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
