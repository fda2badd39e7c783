"""`hazematching demo`: the whole pipeline on simulated data, on a laptop CPU in minutes.

simulate pairs → train a small HazeMatching model → calibrate on validation images →
dehaze held-out images → TIFFs, a side-by-side figure, a calibration plot and a metrics summary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from hazematching import calibration as cal
from hazematching.api import Model
from hazematching.config import ModelConfig
from hazematching.data.pairs import load_pairs
from hazematching.data.synthetic import simulate_pairs, write_pairs
from hazematching.io import atomic_write_text, list_images, write_tiff

#: A network and schedule sized for a 2-core CPU: 64-px patches, 16 base channels.
DEMO_CONFIG = {
    "data": {"patch_size": 64},
    "network": {"model_channels": 16, "channel_mult": [1, 2, 2, 4],
                "attention_downsample": [8]},
    # The demo calibrates on the whole validation folder itself, as a step of its own (timed
    # and plotted to out/calibration.png), instead of on fit's bounded crops.
    "training": {"epochs": 1000, "batch_size": 16, "lr": 5e-4, "ema_decay": 0.995,
                 "seed": 0, "calibrate": False},
    # Inference tiles larger than the training patches: the network is fully convolutional, and
    # 128-px tiles waste less compute on overlaps (measured: same PSNR, 1.5× faster).
    "sampling": {"tile_size": 128, "tile_overlap": 32, "n_samples": 16, "batch_size": 64,
                 "n_time_points": 20},
}


def demo_config(train_minutes: float, overrides: dict | None = None) -> ModelConfig:
    """The demo's configuration, training for at most `train_minutes`."""
    return ModelConfig.from_dict(DEMO_CONFIG).with_overrides(
        {"training.max_minutes": train_minutes, **(overrides or {})}, source="demo")


def run_demo(out: str | Path, *, train_minutes: float = 4.5, n_pairs: int = 200,
             size: int = 128, device: str = "auto", seed: int = 0,
             overrides: dict | None = None) -> str:
    """Run the demo into `out` (which must be new or empty) and return a text summary.

    `overrides` are dotted config fields applied on top of :data:`DEMO_CONFIG` (tests use them
    to shrink the run).

    Writes ``out/data`` (paper layout), ``out/model`` (model directory), ``out/predictions``
    (``*_mmse.tif``, ``*_std.tif``), ``out/figure.png``, ``out/calibration.png`` and
    ``out/summary.json``.
    """
    from hazematching.metrics.fidelity import psnr, ri_psnr

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --out folder")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    target, widefield = simulate_pairs(n_pairs, size, seed=seed, progress=True)
    write_pairs(out / "data", target, widefield, split_fractions=(0.92, 0.04, 0.04))
    timings["simulate_s"] = time.perf_counter() - t0

    model = Model(demo_config(train_minutes, overrides))
    model.fit(out / "data" / "train", out / "data" / "val", out_dir=out / "model")
    timings["train_s"] = time.perf_counter() - t0 - sum(timings.values())

    rep = model.calibrate(out / "data" / "val", device=device, plot=out / "calibration.png",
                          progress=True)
    timings["calibrate_s"] = time.perf_counter() - t0 - sum(timings.values())

    test = load_pairs(out / "data" / "test")
    # The held-out images share one size: predict them as one stack so batches stay full.
    hazy = np.concatenate([x[:, 0] for x in test.inputs])
    gt = np.concatenate(test.targets)
    pred = model.predict(hazy, "ZYX", device=device, return_samples=True, progress=True)
    rows = []
    for i, path in enumerate(list_images(out / "data" / "test")):
        write_tiff(out / "predictions" / f"{path.stem}_mmse.tif", pred.mmse[i], "YX")
        write_tiff(out / "predictions" / f"{path.stem}_std.tif", pred.std[i], "YX")
        rows.append({"image": path.stem, "psnr_input_ri": ri_psnr(hazy[i], gt[i]),
                     "psnr_mmse_ri": ri_psnr(pred.mmse[i], gt[i]),
                     "psnr_mmse": psnr(pred.mmse[i], gt[i])})
    timings["predict_s"] = time.perf_counter() - t0 - sum(timings.values())

    curve = cal.calibration_curve(pred.std, pred.mmse - gt)
    summary = {
        "psnr_input_ri": float(np.mean([r["psnr_input_ri"] for r in rows])),
        "psnr_mmse_ri": float(np.mean([r["psnr_mmse_ri"] for r in rows])),
        "psnr_mmse": float(np.mean([r["psnr_mmse"] for r in rows])),
        "ence_val_before": rep.ence_before, "ence_val_after": rep.ence_after,
        "ence_test_calibrated": cal.ence(curve),
        "calibration": rep.calibration.to_dict(),
        "training": model.training_summary,
        "per_image": rows, "timings_s": {**timings, "total_s": time.perf_counter() - t0},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    _figure(out / "figure.png", hazy[0], pred.mmse[0], pred.samples[0, 0], pred.std[0], gt[0])
    return (f"demo finished in {summary['timings_s']['total_s'] / 60:.1f} min — "
            f"PSNR (range-invariant, {len(rows)} held-out images): input "
            f"{summary['psnr_input_ri']:.2f} dB → MMSE {summary['psnr_mmse_ri']:.2f} dB; "
            f"ENCE on held-out images after calibration {summary['ence_test_calibrated']:.3f}. "
            f"See {out / 'figure.png'} and {out / 'summary.json'}.")


def _figure(path: Path, hazy: np.ndarray, mmse: np.ndarray, sample: np.ndarray,
            std: np.ndarray, target: np.ndarray) -> None:
    """Input / MMSE / one sample / std / target side by side (PNG); all (Y, X)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hazematching.io import atomic_path

    lo, hi = np.percentile(target, (0.5, 99.8))
    panels = [("widefield input", hazy, np.percentile(hazy, (0.5, 99.8)), "gray"),
              ("MMSE (HazeMatching)", mmse, (lo, hi), "gray"),
              ("one posterior sample", sample, (lo, hi), "gray"),
              ("posterior std", std, (0, np.percentile(std, 99.5)), "magma"),
              ("confocal target", target, (lo, hi), "gray")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=110)
    for ax, (title, img, (vmin, vmax), cmap) in zip(axes, panels, strict=True):
        im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
        if cmap == "magma":
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
