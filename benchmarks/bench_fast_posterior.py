"""Fast posterior vs the published inference: wall time and quality, side by side, in one run.

On one trained model (trained here on simulated pairs, or loaded with --model):

* **Quality gate** on held-out images: every sampling configuration ("lever") is scored against
  a faithful re-implementation of the published inference (128-px tiles keeping the central 64,
  50 samples, 20 time points = 19 Euler calls, fp32): range-invariant PSNR of the MMSE, the
  high-frequency power ratio of single samples (0.15–0.45 cycles/px, against the target), and,
  after a calibration fitted on separate validation images, ENCE (with the default monotone
  calibrator, and with the linear one as ``ence_linear``) and the Spearman correlation of std
  and |error| on the test images. A lever passes when its MMSE PSNR is
  within 0.1 dB of the reference, its samples' power ratio within 5 % of the reference's, and
  its calibrated ENCE and Spearman no worse (strictly: a seed-to-seed spread of the reference
  itself is not subtracted). Next to each ENCE gap the table gives its 90 % interval over test
  images drawn with replacement, to tell a real gap from the few images' chance.
* **Wall time** for one --size² image (default 1024²), MMSE + calibrated std: the published
  loop draws its 50 samples one after another and solves one 128-px tile at a time (batch 1, as
  its code does); a subset of its tile-samples is timed and the total extrapolated as
  (time per tile-sample) × tiles × 50. The levers named by --time-levers (default: the
  default settings and the fast preset) run hazematching's predictor on the whole image.
  Timings take the best of --repeats runs, interleaved, so that a busy machine hurts both sides alike; the ratio is the
  figure to quote, not the seconds. Every lever also gets its *work ratio*: the published
  inference's network work (tile pixels × calls × samples) over the lever's, the speed-up it
  would have if every pixel-call cost the same.

Usage:
    python benchmarks/bench_fast_posterior.py --work runs/fast_posterior          # all stages
    python benchmarks/bench_fast_posterior.py --work runs/fp --model models/hm --device cuda
    hazematching distill runs/fp/model runs/fp/data/train_set --out runs/fp/distilled
    python benchmarks/bench_fast_posterior.py --work runs/fp --distilled runs/fp/distilled \
        --levers "distilled, K=16 antithetic" --time-levers "distilled, K=16 antithetic"

Stages are cached in --work (data, model, reference and lever predictions), so a re-run only
repeats the timing and the scoring. Results go to WORK/results.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import stats

from hazematching import calibration as cal
from hazematching.api import Model, load_model
from hazematching.config import SAMPLING_PRESETS, ModelConfig, SamplingConfig
from hazematching.data.pairs import load_pairs
from hazematching.data.synthetic import simulate_pairs, write_pairs
from hazematching.data.tiling import TileGrid
from hazematching.methods.hazematching import HazeMatching, distilled_grid
from hazematching.metrics.fidelity import ri_psnr
from hazematching.metrics.spectral import band_power_ratio
from hazematching.predict import predict_planes, resolve_device
from hazematching.sampling import euler, network_calls, time_grid

#: The model the benchmark trains when none is given: the paper's ADM U-Net at half width on
#: 64-px patches (the demo's size), so that the 50-sample reference fits a CPU session.
TRAIN_CONFIG = {
    "data": {"patch_size": 64},
    "network": {"model_channels": 16, "channel_mult": [1, 2, 2, 4], "attention_downsample": [8]},
    "training": {"epochs": 10000, "batch_size": 16, "lr": 5e-4, "ema_decay": 0.995, "seed": 0},
}

#: Levers, each a set of sampling overrides on top of the published configuration; "default"
#: is hazematching's default configuration, "fast" its opt-in 8-sample preset.
PAPER = SAMPLING_PRESETS["paper"]
FAST = SAMPLING_PRESETS["fast"]
DEFAULT = SAMPLING_PRESETS["default"]
ANTI6 = {"antithetic": True, "n_time_points": 7, "schedule": "late"}
ANTI4 = {"antithetic": True, "n_time_points": 5, "schedule": "late"}
DEFAULT_TILES = {"tile_size": DEFAULT["tile_size"], "tile_overlap": DEFAULT["tile_overlap"]}


def t0_lever(n_samples: int, steps: int) -> dict:
    """K independent samples of `steps` Euler calls on the late grid, the one-call MMSE (free
    with every sample's first call) and the samples' spread about it: no antithetic pairs,
    whose two halves carry one draw's worth of spread."""
    return {"n_samples": n_samples, "n_time_points": steps + 1, "schedule": "late",
            "mmse": "t0", "std": "t0"}


LEVERS: dict[str, dict] = {
    "paper preset (our predictor)": {},
    "K=8": {"n_samples": 8},
    "K=8, t0 mean and std about it": {"n_samples": 8, "mmse": "t0", "std": "t0"},
    "K=8 antithetic": {"n_samples": 8, "antithetic": True},
    "K=8 antithetic, Euler 6 late": {"n_samples": 8, **ANTI6},
    "K=8 antithetic, Euler 6 uniform": {"n_samples": 8, "antithetic": True,
                                        "n_time_points": 7},
    "K=8 antithetic, Heun 3 late (6 calls)": {"n_samples": 8, "antithetic": True,
                                              "solver": "heun", "n_time_points": 4,
                                              "schedule": "late"},
    "K=8 antithetic, Euler 6 late, std about t0": {"n_samples": 8, **ANTI6, "std": "t0"},
    "K=12 antithetic, Euler 6 late, std about t0": {"n_samples": 12, **ANTI6, "std": "t0"},
    "K=16 antithetic, Euler 4 late, std about t0": {"n_samples": 16, **ANTI4, "std": "t0"},
    "K=8 antithetic, Euler 6 late, std smoothed 1 px": {"n_samples": 8, **ANTI6,
                                                        "std_smoothing": 1.0},
    "K=16 antithetic, Euler 4 late, std about t0, smoothed": {
        "n_samples": 16, **ANTI4, "std": "t0", "std_smoothing": 1.0},
    "K=8 antithetic, Euler 6 late, std smoothed 2 px": {"n_samples": 8, **ANTI6,
                                                        "std_smoothing": 2.0},
    "K=16 antithetic, Euler 6 late, std smoothed 1 px": {"n_samples": 16, **ANTI6,
                                                         "std_smoothing": 1.0},
    "K=16 antithetic, Euler 5 late, std smoothed 1 px": {
        "n_samples": 16, "antithetic": True, "n_time_points": 6, "schedule": "late",
        "std_smoothing": 1.0},
    "K=12 antithetic, Euler 6 late": {"n_samples": 12, **ANTI6},
    "K=16 antithetic, Euler 6 late": {"n_samples": 16, **ANTI6},
    "K=16 antithetic, Euler 4 late": {"n_samples": 16, **ANTI4},
    "K=50, Euler 6 late": {"n_time_points": 7, "schedule": "late"},
    "K=8, Euler 6 late, t0 mean and std about it": t0_lever(8, 6),
    "K=12, Euler 6 late, t0 mean and std about it": t0_lever(12, 6),
    "K=8, Euler 4 late, t0 mean and std about it": t0_lever(8, 4),
    "K=16, Euler 4 late, t0 mean and std about it": t0_lever(16, 4),
    "default": DEFAULT,
    "default + bf16": {**DEFAULT, "precision": "bf16"},
    "fast preset": FAST,
    "fast preset + bf16": {**FAST, "precision": "bf16"},
    "balanced preset": SAMPLING_PRESETS["balanced"],
    "balanced preset + bf16": {**SAMPLING_PRESETS["balanced"], "precision": "bf16"},
    "K=16 antithetic, midpoint 2 steps (4 calls)": {"n_samples": 16, "antithetic": True,
                                                    "solver": "midpoint", "n_time_points": 3},
    "K=16 antithetic, midpoint 2 steps late (4 calls)": {
        "n_samples": 16, "antithetic": True, "solver": "midpoint", "n_time_points": 3,
        "schedule": "late"},
    # The CPU batch before it became a pixel budget (predict.CPU_BATCH_PIXELS): eight tiles.
    "fast preset, batch 8": {**FAST, "batch_size": 8},
    "balanced preset, batch 8": {**SAMPLING_PRESETS["balanced"], "batch_size": 8},
    # On the model given with --distilled (`hazematching distill` of the benchmark's model),
    # sampled on its own grid: K samples of `distilled_steps` Euler calls, default tiles.
    "distilled, K=8 antithetic": {"distilled": True, "n_samples": 8, "antithetic": True,
                                  **DEFAULT_TILES},
    "distilled, K=16 antithetic": {"distilled": True, "n_samples": 16, "antithetic": True,
                                   **DEFAULT_TILES},
    "distilled, K=50": {"distilled": True, "n_samples": 50, **DEFAULT_TILES},
}


def for_lever(model: Model, distilled: Model | None, overrides: dict) -> tuple[Model, dict]:
    """The model a lever runs on and its sampling overrides: a lever marked "distilled" runs
    on the --distilled model, on the grid it was distilled for; the others on `model`."""
    if not overrides.get("distilled"):
        return model, overrides
    if distilled is None:
        raise SystemExit("a 'distilled, …' lever needs --distilled MODEL")
    grid = distilled_grid(distilled.method.options.distilled_steps)
    return distilled, {**{k: v for k, v in overrides.items() if k != "distilled"}, **grid}


# ----------------------------------------------------------------------------- published
def published_grid(h: int, w: int, tile: int = 128, keep: int = 64) -> tuple[list, int, int]:
    """Tile corners of the published inference: the image is mirror-padded by (tile−keep)/2 and
    to a multiple of `keep`; tiles of `tile` px at stride `keep`; each keeps its central
    keep × keep pixels. Returns (corners in padded coordinates, padded height, padded width)."""
    hh, ww = -(-h // keep) * keep, -(-w // keep) * keep
    return [(y, x) for y in range(0, hh, keep) for x in range(0, ww, keep)], hh, ww


def published_predict(method: HazeMatching, plane: np.ndarray, *, n_samples: int = 50,
                      n_points: int = 20, seed: int = 0, batch: int = 32,
                      device: torch.device, keep_samples: int = 0,
                      max_items: int | None = None, centre_only: bool = False) -> dict:
    """The published inference on one normalised plane (C, H, W): every (sample, tile) solved
    with Euler on linspace(0, 1, n_points) from its own noise, the central 64 px kept.

    With ``batch=1`` this is the published loop itself (one tile of one sample per call);
    larger batches give the same numbers faster (for the quality reference). `max_items`
    stops after that many tile-samples (for timing a subset). `centre_only` solves only the
    one tile centred on a 128-px plane and keeps its central 64 px (the rest stays 0): the
    published processing of a region with full image context, at a quarter of the cost.
    Returns mean (H, W), std (H, W, ddof=1), the first `keep_samples` samples, and the number
    of tile-samples solved.
    """
    c, h, w = plane.shape
    tile, keep = 128, 64
    m = (tile - keep) // 2
    corners, hh, ww = published_grid(h, w, tile, keep)
    if centre_only:
        if (h, w) != (tile, tile):
            raise ValueError(f"centre_only needs a {tile}-px plane, got {h}×{w}")
        corners = [(m, m)]
    padded = np.pad(plane, ((0, 0), (m, m + hh - h), (m, m + ww - w)), mode="reflect")
    items = [(s, y, x) for s in range(n_samples) for (y, x) in corners]
    if max_items is not None:
        items = items[:max_items]
    total, total_sq = np.zeros((hh, ww)), np.zeros((hh, ww))
    samples = np.zeros((keep_samples, hh, ww), np.float32)
    gen = torch.Generator(device=device).manual_seed(seed)
    grid = time_grid(n_points, device)
    with torch.inference_mode():
        for k in range(0, len(items), batch):
            chunk = items[k:k + batch]
            cond = torch.from_numpy(np.stack([padded[:, y:y + tile, x:x + tile]
                                              for _, y, x in chunk])).to(device)
            x0 = torch.randn((len(chunk), 1, tile, tile), generator=gen, device=device)
            out = euler(lambda t, x: method.velocity(t, x, cond), x0, grid)
            out = out[:, 0, m:m + keep, m:m + keep].double().cpu().numpy()
            for (s, y, x), o in zip(chunk, out):
                total[y:y + keep, x:x + keep] += o
                total_sq[y:y + keep, x:x + keep] += o * o
                if s < keep_samples:
                    samples[s, y:y + keep, x:x + keep] = o
    n = n_samples
    mean = total / n
    std = np.sqrt(np.maximum(total_sq - n * mean * mean, 0) / (n - 1))
    return {"mean": mean[:h, :w], "std": std[:h, :w], "samples": samples[:, :h, :w],
            "items": len(items)}


# ------------------------------------------------------------------------------ quality
@dataclass
class Outputs:
    """Per image, in normalised units: MMSE (H, W), std (H, W), a few samples (k, H, W)."""

    mean: list[np.ndarray]
    std: list[np.ndarray]
    samples: list[np.ndarray]


#: Quality is scored on the central 64 × 64 px of each 128-px held-out image: there the
#: published inference sees the same full 128-px context as hazematching's one-tile
#: prediction, and its reference costs one tile per image instead of four.
CROP = np.s_[..., 32:96, 32:96]


def run_reference(model: Model, planes: list[np.ndarray], device, seed: int) -> Outputs:
    outs = [published_predict(model.method, p, seed=seed + i, device=device, keep_samples=4,
                              centre_only=True) for i, p in enumerate(planes)]
    return Outputs([o["mean"][CROP] for o in outs], [o["std"][CROP] for o in outs],
                   [o["samples"][CROP] for o in outs])


def lever_config(model: Model, overrides: dict) -> SamplingConfig:
    """The model's sampling settings with the published ones and then `overrides` applied."""
    return model.config.sampling.model_copy(update={**PAPER, **overrides})


def save_outputs(path: Path, val: Outputs, test: Outputs) -> None:
    """Both sets' outputs in one .npz (written whole, then renamed)."""
    tmp = path.with_name(path.stem + ".partial.npz")
    np.savez(tmp, vm=val.mean, vs=val.std, vx=val.samples, tm=test.mean, ts=test.std,
             tx=test.samples)
    tmp.replace(path)


def load_outputs(path: Path) -> tuple[Outputs, Outputs]:
    """What :func:`save_outputs` wrote: (validation, test)."""
    z = np.load(path)
    return (Outputs(list(z["vm"]), list(z["vs"]), list(z["vx"])),
            Outputs(list(z["tm"]), list(z["ts"]), list(z["tx"])))


def cached_lever(work: Path, model: Model, overrides: dict, val_x: list, test_x: list,
                 device, tag: str = "") -> tuple[Outputs, Outputs]:
    """A lever's outputs on both sets, cached in WORK/levers under a digest of its full
    sampling settings (and `tag`, naming a model other than the benchmark's), so a re-run
    (e.g. with another calibrator) only re-scores."""
    cfg = lever_config(model, overrides)
    key = hashlib.sha1((cfg.model_dump_json() + tag).encode()).hexdigest()[:16]
    path = work / "levers" / f"{key}.npz"
    if path.exists():
        return load_outputs(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    val = run_lever(model, val_x, overrides, device)
    test = run_lever(model, test_x, overrides, device)
    save_outputs(path, val, test)
    return val, test


def run_lever(model: Model, planes: list[np.ndarray], overrides: dict, device) -> Outputs:
    cfg = lever_config(model, overrides)
    x = np.stack(planes)
    samples = np.zeros((len(planes), cfg.n_samples, *x.shape[2:]), np.float32)
    res = predict_planes(model.method, x, cfg, device=device, samples_out=samples)
    return Outputs([m[CROP] for m in res.mean], [s[CROP] for s in res.std],
                   [s[:4][CROP] for s in samples])


def score(val: Outputs, test: Outputs, val_t: list[np.ndarray], test_t: list[np.ndarray]
          ) -> dict:
    """MMSE RI-PSNR, samples' HF power ratio, calibrated ENCE and Spearman on the test set."""
    err_v = np.concatenate([(m - t).ravel() for m, t in zip(val.mean, val_t)])
    std_v = np.concatenate([s.ravel() for s in val.std])
    err_t = np.concatenate([(m - t).ravel() for m, t in zip(test.mean, test_t)])
    raw_t = np.concatenate([s.ravel() for s in test.std])
    ence, parts = {}, []
    for kind in ("monotone", "linear"):
        calib = cal.fit(std_v, err_v, kind=kind)
        ence[kind] = cal.ence(cal.calibration_curve(calib.apply(raw_t), err_t))
        if kind == "monotone":
            parts = [(calib.apply(s).ravel(), (m - t).ravel())
                     for s, m, t in zip(test.std, test.mean, test_t)]
    return {
        "psnr": float(np.mean([ri_psnr(m, t) for m, t in zip(test.mean, test_t)])),
        "hf_ratio": float(np.mean([band_power_ratio(s, t).mean()
                                   for s, t in zip(test.samples, test_t)])),
        # The gate's ENCE is that of the project's default calibrator (monotone); both
        # calibrators keep the std's ranking, so one Spearman correlation serves both.
        "ence": ence["monotone"],
        "ence_linear": ence["linear"],
        "spearman": float(stats.spearmanr(raw_t, np.abs(err_t))[0]),
        "calibration": [calib.a, calib.b],
        "_parts": parts,  # per test image: calibrated std and error, for the bootstrap
    }


def ence_delta_interval(ref: list, lever: list, n_boot: int = 400, seed: int = 0
                        ) -> tuple[float, float]:
    """90 % interval of ENCE(lever) − ENCE(reference) over test images drawn with replacement
    (the same draw for both: the images are shared), with each side's calibration held fixed.
    It says how much of a gap the few test images can tell from chance."""
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(ref), len(ref))
        e = [cal.ence(cal.calibration_curve(np.concatenate([side[i][0] for i in idx]),
                                            np.concatenate([side[i][1] for i in idx])))
             for side in (lever, ref)]
        deltas.append(e[0] - e[1])
    lo, hi = np.percentile(deltas, [5, 95])
    return float(lo), float(hi)


def gate(q: dict, ref: dict) -> dict:
    checks = {"psnr": q["psnr"] >= ref["psnr"] - 0.1,
              "hf": abs(q["hf_ratio"] / ref["hf_ratio"] - 1) <= 0.05,
              "ence": q["ence"] <= ref["ence"],
              "spearman": q["spearman"] >= ref["spearman"]}
    return {"passes": all(checks.values()), **checks}


# ------------------------------------------------------------------------------- timing
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_published(model: Model, image: np.ndarray, device, items: int) -> tuple[float, int]:
    """Seconds per tile-sample of the published loop (batch 1), and tile-samples per image."""
    corners, _, _ = published_grid(*image.shape[1:])
    _sync(device)
    t0 = time.perf_counter()
    published_predict(model.method, image, n_samples=50, batch=1, device=device,
                      max_items=items)
    _sync(device)
    return (time.perf_counter() - t0) / items, len(corners) * 50


def time_lever(model: Model, image: np.ndarray, overrides: dict, device) -> float:
    cfg = lever_config(model, overrides)
    _sync(device)
    t0 = time.perf_counter()
    predict_planes(model.method, image[None], cfg, device=device)
    _sync(device)
    return time.perf_counter() - t0


def tiling_study(model: Model, work: Path, size: int, device) -> dict:
    """The default settings with tiles of 128, 256 and `size` px (one tile: no seams) on two
    held-out size² images: MMSE RI-PSNR against the target, and how far the MMSE and one
    stitched sample move from the one-tile result (RMS, relative to the target's std). The
    noise field is the same for every tiling, so the one-tile sample is the reference."""
    folder = work / "data" / f"tiling_{size}"
    if not folder.exists():
        t, w = simulate_pairs(2, size, seed=3)
        write_pairs(folder, t, w, split_fractions=(1.0, 0.0, 0.0))
    pairs = load_pairs(folder / "train")
    x = np.concatenate([model.normalizer.normalize_input(p) for p in pairs.inputs])
    target = np.concatenate([model.normalizer.normalize_target(t) for t in pairs.targets])
    out: dict[int, dict] = {}
    for tile in (size, 256, 128):
        cfg = model.config.sampling.model_copy(update={**DEFAULT, "tile_size": tile})
        samples = np.zeros((len(x), cfg.n_samples, size, size), np.float32)
        t0 = time.perf_counter()
        res = predict_planes(model.method, x, cfg, device=device, samples_out=samples)
        seconds = time.perf_counter() - t0
        out[tile] = {"mean": res.mean, "sample": samples[:, 0], "seconds": seconds,
                     "psnr": float(np.mean([ri_psnr(m, t) for m, t in zip(res.mean, target)]))}
    whole = out[size]
    scale = float(target.std())
    return {str(tile): {"psnr": r["psnr"], "seconds": r["seconds"],
                        "mmse_rms_vs_one_tile": float(np.sqrt(np.mean(
                            (r["mean"] - whole["mean"]) ** 2)) / scale),
                        "sample_rms_vs_one_tile": float(np.sqrt(np.mean(
                            (r["sample"] - whole["sample"]) ** 2)) / scale)}
            for tile, r in out.items()}


# -------------------------------------------------------------------------------- stages
def prepare(work: Path, args) -> tuple[Model, list, list, list, list]:
    data = work / "data"
    if not args.model and not (data / "train_set").exists():
        t, w = simulate_pairs(240, 128, seed=1)
        write_pairs(data / "train_set", t, w, split_fractions=(0.9, 0.1, 0.0))
    if not (data / "eval").exists():
        t, w = simulate_pairs(2 * args.n_eval, 128, seed=2)
        write_pairs(data / "eval", t, w, split_fractions=(0.5, 0.5, 0.0))
    if args.model:
        model = load_model(args.model)
    elif (work / "model" / "model.json").exists():
        model = load_model(work / "model")
    else:
        overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        cfg = ModelConfig.from_dict(TRAIN_CONFIG).with_overrides(
            {"training.max_minutes": args.train_minutes, **overrides})
        model = Model(cfg).fit(data / "train_set" / "train", data / "train_set" / "val",
                               out_dir=work / "model")
    norm = model.normalizer
    sets = []
    for split in ("train", "val"):
        pairs = load_pairs(data / "eval" / split)
        sets.append([norm.normalize_input(x)[0] for x in pairs.inputs])
        sets.append([norm.normalize_target(t)[0][CROP] for t in pairs.targets])
    return model, *sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="cache and results folder")
    ap.add_argument("--model", type=Path, help="a trained model (default: train one)")
    ap.add_argument("--distilled", type=Path, help="a distillation of that model (hazematching "
                    "distill), for the 'distilled, …' levers")
    ap.add_argument("--train-minutes", type=float, default=10.0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a dotted config override for the trained model, e.g. "
                         "training.t0_fraction=0.25 (repeatable)")
    ap.add_argument("--n-eval", type=int, default=6, help="validation and test images each")
    ap.add_argument("--size", type=int, default=1024, help="side of the timed image (px)")
    ap.add_argument("--published-items", type=int, default=6,
                    help="tile-samples of the published loop to time")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--levers", default="cheap",
                    help="semicolon-separated lever names, 'all', or 'cheap' (all but the paper "
                         "preset, which costs as much as the reference; the 'distilled, …' "
                         "levers only with --distilled)")
    ap.add_argument("--time-levers", default="default;fast preset",
                    help="levers to time on the --size² image (semicolon-separated, or 'all')")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--tiling-size", type=int, default=0,
                    help="also run the tile-size study on two images of this side (e.g. 512)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(args.device)
    model, val_x, val_t, test_x, test_t = prepare(work, args)
    method = model.method.to(dev).eval()
    distilled = load_model(args.distilled) if args.distilled else None
    if distilled is not None:
        distilled.method.to(dev).eval()
    tag = f"distilled:{args.distilled.resolve()}" if args.distilled else ""
    if args.levers in ("all", "cheap"):
        levers = {k: v for k, v in LEVERS.items() if (args.levers == "all" or v != {})
                  and (distilled is not None or not v.get("distilled"))}
    else:
        levers = {k: LEVERS[k] for k in args.levers.split(";")}
    print(f"device {dev}, torch threads {torch.get_num_threads()}, "
          f"{sum(p.numel() for p in method.parameters()):,} parameters", flush=True)

    ref_file = work / "reference.npz"
    if ref_file.exists():
        ref_v, ref_t = load_outputs(ref_file)
    else:
        t0 = time.perf_counter()
        ref_v = run_reference(model, val_x, dev, seed=100)
        ref_t = run_reference(model, test_x, dev, seed=200)
        save_outputs(ref_file, ref_v, ref_t)
        print(f"reference (published, batched) on {2 * len(val_x)} images: "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    results = {"reference": score(ref_v, ref_t, val_t, test_t), "levers": {}}
    ref_q = results["reference"]
    ref_parts = ref_q.pop("_parts")
    for name, over in levers.items():
        m, o = for_lever(model, distilled, over)
        q = score(*cached_lever(work, m, o, val_x, test_x, dev, tag if m is distilled else ""),
                  val_t, test_t)
        q["ence_delta_90"] = ence_delta_interval(ref_parts, q.pop("_parts"))
        results["levers"][name] = {"overrides": over, **q, "gate": gate(q, ref_q)}
        print(f"  {name}: {json.dumps({k: v for k, v in q.items() if k != 'calibration'})}",
              flush=True)

    if args.tiling_size:
        results["tiling"] = tiling_study(model, work, args.tiling_size, dev)
        print(f"tiling: {json.dumps(results['tiling'])}", flush=True)
    size = args.size
    pub_corners, _, _ = published_grid(size, size)
    pub_work = len(pub_corners) * 128 * 128 * 50 * 19
    for name, r in results["levers"].items():
        m, o = for_lever(model, distilled, r["overrides"])
        cfg = lever_config(m, o)
        g = TileGrid.make(size, size, cfg.tile_size, cfg.tile_overlap,
                          m.config.network.divisor)
        calls = network_calls(cfg.solver, cfg.n_time_points)
        r["work_ratio"] = pub_work / (g.tile_pixels * cfg.n_samples * calls)
    if not args.no_timing:
        timed = list(levers) if args.time_levers == "all" else args.time_levers.split(";")
        rng = np.random.default_rng(0)
        image = rng.normal(size=(model.config.in_channels, size, size)).astype(np.float32)
        per_item, n_items = [], 0
        lever_s: dict[str, list[float]] = {k: [] for k in timed}
        for _ in range(args.repeats):
            s, n_items = time_published(model, image, dev, args.published_items)
            per_item.append(s)
            for name in timed:
                m, over = for_lever(model, distilled, LEVERS[name])
                lever_s[name].append(time_lever(m, image, over, dev))
        published_s = min(per_item) * n_items
        results["timing"] = {"size": size, "device": str(dev),
                             "threads": torch.get_num_threads(),
                             "published_s": published_s,
                             "published_per_tile_sample_s": min(per_item),
                             "published_tile_samples": n_items,
                             "levers_s": {k: min(v) for k, v in lever_s.items()}}
        for name in timed:
            results["levers"].setdefault(name, {})["speedup"] = published_s / min(lever_s[name])

    (work / "results.json").write_text(json.dumps(results, indent=1))
    print("\n| lever | work ratio | speed-up | MMSE RI-PSNR Δ (dB) | sample HF ratio (Δ) | "
          "ENCE (Δ) | Δ ENCE, 90 % over images | ENCE, linear fit (Δ) | Spearman (Δ) | "
          "gate |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| published (re-implementation) | 1 | 1.0× | {ref_q['psnr']:.2f} dB | "
          f"{ref_q['hf_ratio']:.3f} | {ref_q['ence']:.3f} | — | {ref_q['ence_linear']:.3f} | "
          f"{ref_q['spearman']:.3f} | — |")
    for name, r in results["levers"].items():
        sp = f"{r['speedup']:.1f}×" if "speedup" in r else "—"
        if "psnr" not in r:  # timed only
            print(f"| {name} | — | {sp} | — | — | — | — | — | — | not scored |")
            continue
        failed = [k for k, v in r["gate"].items() if k != "passes" and not v]
        print(f"| {name} | {r['work_ratio']:.1f} | {sp} | {r['psnr'] - ref_q['psnr']:+.2f} | "
              f"{r['hf_ratio']:.3f} "
              f"({r['hf_ratio'] / ref_q['hf_ratio'] - 1:+.1%}) | {r['ence']:.3f} "
              f"({r['ence'] - ref_q['ence']:+.3f}) | {r['ence_delta_90'][0]:+.3f} … "
              f"{r['ence_delta_90'][1]:+.3f} | {r['ence_linear']:.3f} "
              f"({r['ence_linear'] - ref_q['ence_linear']:+.3f}) | {r['spearman']:.3f} "
              f"({r['spearman'] - ref_q['spearman']:+.3f}) | "
              f"{'pass' if r['gate']['passes'] else 'fail: ' + ', '.join(failed)} |")
    if "timing" in results:
        t = results["timing"]
        print(f"\npublished inference, {t['size']}², extrapolated from "
              f"{args.published_items} of {t['published_tile_samples']} tile-samples: "
              f"{t['published_s']:.0f} s; hazematching default: "
              f"{t['levers_s'].get('default', float('nan')):.1f} s")


if __name__ == "__main__":
    main()
