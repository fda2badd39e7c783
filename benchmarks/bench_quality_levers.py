"""Training and sampler levers of issue 12, scored on held-out test pairs: one table, one run.

For every trained HazeMatching model given (e.g. trained with ``hazematching train … --set
training.t0_fraction=0.25``) and every sampler asked for, it draws K posterior samples per test
image in antithetic pairs (x0, −x0), the same noise for every model and sampler, and reports:

* the MMSE as the mean of the K samples, and as the mean of the K one-call estimates
  x0 + v(0, x0, y) (``sampling.mmse = 't0'``), range-invariant PSNR against the target;
* one sample's range-invariant PSNR and the samples' high-frequency power ratio (0.15–0.45
  cycles/px against the target's, → 1: the texture of a posterior sample);
* with ``--val``: the std (the samples' spread) calibrated by the monotone map fitted on the
  validation images with the same sampler and K, its ENCE on the test images, and the
  Spearman correlation of the raw std and |error| there (calibration across regions);
* for a deterministic model (e.g. ``--method regression``), its prediction's PSNR.

A distilled model (``hazematching distill``) is always sampled on its own grid: one row.
Quick to run against ``bench_quality_real.py``: no FRC or MS-SSIM — that benchmark gives
those for the chosen settings.

Usage:
    python benchmarks/bench_quality_levers.py --test runs/qr/data/test \\
        --model runs/levers/default --model runs/levers/t0_0.25 \\
        --model runs/qr/bench/models/U-Net \\
        --sampler euler:20 --sampler midpoint:10 --samples 8 [--val runs/qr/data/val]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from hazematching import calibration as cal
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


def draw(method, cond: torch.Tensor, settings: SamplingConfig | None, k: int, seed: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """K posterior samples (K, H, W) of one condition (1, C, H, W) in antithetic pairs drawn
    with `seed`, and their one-call estimates x0 + v(0, x0, y)."""
    half = torch.randn((k // 2, 1, *cond.shape[2:]), generator=torch.Generator().manual_seed(seed))
    noise = torch.cat([half, -half])
    ends, first = [], []
    batch = default_batch_size(torch.device("cpu"), cond.shape[2] * cond.shape[3])
    with torch.no_grad():
        for j in range(0, k, batch):
            n = noise[j:j + batch]
            end, estimate = method.posterior_batch(cond.expand(len(n), -1, -1, -1), n, settings)
            ends.append(end.numpy()[:, 0])
            first.append(estimate.numpy()[:, 0])
    return np.concatenate(ends), np.concatenate(first)


def spread_and_error(method, norm, pairs, i: int, settings, k: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For image i of `pairs`: the samples, one-call estimates, std (ddof 1) and MMSE error,
    normalised units."""
    cond = torch.from_numpy(norm.normalize_input(pairs.inputs[i])).float()[:1]
    target = norm.normalize_target(pairs.targets[i])[0]
    ends, first = draw(method, cond, settings, k, seed)
    return ends, first, ends.std(0, ddof=1), ends.mean(0) - target


def score(model_dir: Path, test: Path, samplers: list[str], k: int, n_images: int | None,
          val: Path | None = None) -> list[dict]:
    """One row per sampler (one for a deterministic model, and one for a distilled model,
    which is always sampled on its own grid) of mean scores over the images; with `val`, also
    the test images' ENCE after a monotone calibration fitted on the validation images and the
    Spearman correlation of std and |error| (pixels of all test images pooled)."""
    model = load_model(model_dir)
    method, norm = model.method.eval(), model.normalizer
    pairs = load_pairs(test)
    val_pairs = load_pairs(val) if val is not None and method.stochastic else None
    count = len(pairs) if n_images is None else min(n_images, len(pairs))
    distilled = getattr(method.options, "distilled_steps", None)
    specs = ([f"euler:{distilled + 1} (distilled)"] if distilled else samplers) \
        if method.stochastic else ["—"]
    rows = []
    for spec in specs:
        settings = sampler(spec) if method.stochastic and not distilled else None
        started, scores = time.perf_counter(), {}
        stds, errs = [], []
        for i in range(count):
            target = norm.normalize_target(pairs.targets[i])[0]
            if not method.stochastic:
                cond = torch.from_numpy(norm.normalize_input(pairs.inputs[i])).float()[:1]
                with torch.no_grad():
                    scores.setdefault("mmse", []).append(
                        ri_psnr(method.predict_batch(cond).numpy()[0, 0], target))
                continue
            ends, first, std, err = spread_and_error(method, norm, pairs, i, settings, k, i)
            stds.append(std)
            errs.append(err)
            for name, value in (("mmse", ri_psnr(ends.mean(0), target)),
                                ("mmse_t0", ri_psnr(first.mean(0), target)),
                                ("sample", ri_psnr(ends[0], target)),
                                ("sample_hf", float(band_power_ratio(ends, target).mean()))):
                scores.setdefault(name, []).append(value)
        row = {"model": str(model_dir), "sampler": spec, "images": count,
               **{n: round(float(np.mean(v)), 3) for n, v in scores.items()}}
        if val_pairs is not None:
            fit_on = [spread_and_error(method, norm, val_pairs, i, settings, k, 10_000 + i)[2:]
                      for i in range(min(count, len(val_pairs)))]
            calib = cal.fit(np.concatenate([s.ravel() for s, _ in fit_on]),
                            np.concatenate([e.ravel() for _, e in fit_on]))
            std, err = (np.concatenate([a.ravel() for a in x]) for x in (stds, errs))
            row["ence"] = round(cal.ence(cal.calibration_curve(calib.apply(std), err)), 3)
            row["spearman"] = round(float(stats.spearmanr(std, np.abs(err))[0]), 3)
        rows.append({**row, "seconds": round(time.perf_counter() - started)})
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
    parser.add_argument("--images", type=int, help="Only the first N test images (and, with "
                        "--val, validation images).")
    parser.add_argument("--val", type=Path, help="Folder of validation pairs: fit the std's "
                        "monotone calibration there, report the test ENCE and Spearman.")
    parser.add_argument("--out", type=Path, help="Also write the rows as JSON here.")
    args = parser.parse_args(argv)
    if args.samples < 2 or args.samples % 2:
        parser.error(f"--samples must be even and at least 2, got {args.samples}")
    samplers = args.sampler or ["euler:20", "midpoint:10"]
    for spec in samplers:
        sampler(spec)  # a bad spec fails before any model runs
    torch.manual_seed(0)
    rows = [r for m in args.model for r in score(m, args.test, samplers, args.samples,
                                                  args.images, args.val)]
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
