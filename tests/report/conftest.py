"""Small real evaluation results (two methods, one dataset) written as JSON, for report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from hazematching.metrics.evaluate import GALLERY_FILE, evaluate_arrays, save_gallery, save_results

METRICS = ["psnr", "ri_psnr", "ssim", "power_ratio", "uncertainty"]


@pytest.fixture(scope="session")
def results_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """``[good/results.json, blurry/results.json]`` with galleries, for dataset 'toy'."""
    rng = np.random.default_rng(0)
    targets = [gaussian_filter(rng.random((64, 64)), 2).astype(np.float32) for _ in range(2)]
    inputs = [gaussian_filter(t, 3) for t in targets]
    root = tmp_path_factory.mktemp("results")
    paths = []
    for method, blur in (("good", 0.5), ("blurry", 2.0)):
        samples = [np.stack([gaussian_filter(t, blur) + rng.normal(0, 0.01, t.shape)
                             for _ in range(4)]).astype(np.float32) for t in targets]
        mmse = [s.mean(axis=0) for s in samples]
        res = evaluate_arrays(mmse, targets, samples, input=inputs, metrics=METRICS,
                              dataset="toy", method=method)
        folder = root / method
        save_gallery(folder / GALLERY_FILE, target=targets[0], mmse=mmse[0],
                     samples=samples[0], std=samples[0].std(axis=0), input=inputs[0])
        res["gallery"] = GALLERY_FILE
        res["unavailable"] = {"lpips": "missing pretrained weight file(s) in /x:\n  a.pth"}
        paths.append(save_results(res, folder / "results.json"))
    return paths
