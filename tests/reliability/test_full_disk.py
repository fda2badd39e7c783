"""A disk that fills up during a write (RLIMIT_FSIZE: the write call fails as on a full disk):
the previous image, model and checkpoint are left exactly as they were, nothing half-written."""

from __future__ import annotations

import numpy as np
import torch
from conftest import TINY
from helpers import make_pairs
from reliability.full_disk import rewrite_everything
from reliability.processes import run_with_file_size_limit

from hazematching import load_model
from hazematching.config import ModelConfig
from hazematching.data.normalization import Normalizer
from hazematching.io import write_tiff
from hazematching.methods import build_method
from hazematching.model_io import save_model


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_full_disk_leaves_previous_results_intact(tmp_path):
    write_tiff(tmp_path / "pred" / "a_mmse.tif", np.zeros((8, 8), np.float32), "YX")
    pairs = make_pairs(2)
    config = ModelConfig.from_dict(TINY)
    save_model(tmp_path / "model", build_method(config),
               Normalizer.fit(pairs.targets, pairs.inputs))
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "checkpoints" / "last.ckpt")
    before = _snapshot(tmp_path)
    limit = 2**20  # each rewrite is larger (the wider network: 2.8 MB of weights); all else less
    assert all(len(data) < limit for data in before.values())

    errors = run_with_file_size_limit(rewrite_everything, limit, tmp_path / "report.json",
                                      str(tmp_path), TINY)
    (tmp_path / "report.json").unlink()

    for what, path in (("image", "pred/a_mmse.tif"), ("model", "model/weights.safetensors"),
                       ("checkpoint", "checkpoints/last.ckpt")):
        assert errors[what].startswith(f"WriteError: {tmp_path / path}: writing failed ("), errors
        assert errors[what].endswith("); the previous file is unchanged"), errors
    assert _snapshot(tmp_path) == before  # no byte changed, no temporary file left
    assert load_model(tmp_path / "model").config.network.model_channels == 8


def test_full_disk_during_an_ome_zarr_prediction_keeps_the_previous_output(tmp_path):
    from reliability.full_disk import rewrite_zarr_prediction

    pairs = make_pairs(2)
    config = ModelConfig.from_dict(TINY)
    model = save_model(tmp_path / "model", build_method(config),
                       Normalizer.fit(pairs.targets, pairs.inputs))
    write_tiff(tmp_path / "in" / "a.tif", pairs.inputs[0][0, 0], "YX")
    load_model(model).predict_file(tmp_path / "in" / "a.tif", tmp_path / "pred", n_samples=2,
                                   output_format="zarr", device="cpu")
    (tmp_path / "in" / "a.tif").unlink()
    noise = np.random.default_rng(0).uniform(0, 1000, (512, 512)).astype(np.float32)
    write_tiff(tmp_path / "in" / "big.tif", noise, "YX")
    before = _snapshot(tmp_path / "pred")
    limit = 2**16  # the 48² outputs' chunks are smaller, the 512² noise image's larger
    assert any(p.name.endswith(".ome.zarr") for p in (tmp_path / "pred").iterdir())
    assert all(len(data) < limit for data in before.values())

    errors = run_with_file_size_limit(rewrite_zarr_prediction, limit, tmp_path / "report.json",
                                      str(tmp_path), TINY)
    assert errors["zarr"].startswith(f"WriteError: {tmp_path / 'pred'}/a_"), errors
    assert errors["zarr"].endswith("; the previous file is unchanged"), errors
    assert _snapshot(tmp_path / "pred") == before  # no byte changed, no temporary folder left
