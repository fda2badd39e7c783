"""The demo pipeline end to end, shrunk to seconds (the real demo is the README's command)."""

import json

import pytest
import tifffile

from hazematching.demo import run_demo


@pytest.mark.slow
def test_demo_writes_every_artefact(tmp_path):
    out = tmp_path / "demo"
    text = run_demo(out, train_minutes=0.2, n_pairs=24, size=64, overrides={
        "training.epochs": 2, "data.patch_size": 32, "sampling.tile_size": 32,
        "sampling.tile_overlap": 8, "sampling.n_samples": 3, "sampling.n_time_points": 3,
        "network.model_channels": 8, "network.channel_mult": [1, 2],
        "network.attention_downsample": [2]})
    assert "PSNR" in text and "ENCE" in text
    for name in ("figure.png", "calibration.png", "summary.json", "model/model.json",
                 "data/train", "data/val", "data/test"):
        assert (out / name).exists(), name
    s = json.loads((out / "summary.json").read_text())
    assert {"psnr_input_ri", "psnr_mmse_ri", "ence_test_calibrated"} <= set(s)
    preds = sorted(p.name for p in (out / "predictions").iterdir())
    assert len(preds) == 2 * len(s["per_image"]) and tifffile.imread(
        out / "predictions" / preds[0]).shape == (64, 64)
    with pytest.raises(FileExistsError, match="not empty"):
        run_demo(out)
