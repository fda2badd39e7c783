"""Helpers of the fault tests: tiny config files, the training runs a model directory logged,
and an end-to-end check that a model directory loads and predicts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml
from conftest import TINY
from helpers import make_pairs

from hazematching import load_model


def config_file(folder: Path, **training: object) -> Path:
    """Write TINY, with `training` fields overridden (e.g. epochs=3), as `folder`/config.yaml."""
    raw = {**TINY, "training": {**TINY["training"], **training}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def with_patches(path: Path, patches_per_epoch: int) -> Path:
    """Set ``data.patches_per_epoch`` in the config file `path` (steps = patches / batch 4)."""
    raw = yaml.safe_load(path.read_text())
    raw["data"] = {**raw["data"], "patches_per_epoch": patches_per_epoch}
    path.write_text(yaml.safe_dump(raw))
    return path


def logged_val_epochs(model_dir: Path) -> list[list[int]]:
    """Per run (CSV log version), the epochs whose validation loss it logged."""
    runs = []
    for f in sorted((model_dir / "logs" / "csv").glob("version_*/metrics.csv"),
                    key=lambda p: int(p.parent.name.split("_")[1])):
        rows = list(csv.DictReader(f.open()))
        runs.append(sorted({int(r["epoch"]) for r in rows if r.get("val_loss")}))
    return runs


def assert_loads_and_predicts(model_dir: Path) -> None:
    model = load_model(model_dir)
    image = make_pairs(1, size=40, seed=4).inputs[0][0, 0]
    pred = model.predict(image, n_samples=2, device="cpu")
    assert pred.mmse.shape == (40, 40) and np.isfinite(pred.mmse).all()
    assert pred.std is not None and np.isfinite(pred.std).all()
