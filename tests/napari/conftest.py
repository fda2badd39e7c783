"""Fixtures for the napari plugin: a tiny trained, calibrated model directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_pairs

from hazematching.api import Model
from hazematching.config import ModelConfig


@pytest.fixture(scope="session")
def tiny_config_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test suite's tiny network and sampler (``conftest.TINY``) as a YAML config file."""
    from conftest import TINY

    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    ModelConfig.from_dict(TINY).with_overrides({"training.epochs": 1}).to_yaml(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_config_yaml: Path) -> Path:
    """A tiny HazeMatching model trained for one epoch with real Lightning, then calibrated."""
    out = tmp_path_factory.mktemp("model")
    model = Model(ModelConfig.from_yaml(tiny_config_yaml)).fit(
        make_pairs(3), make_pairs(2, seed=5), out_dir=out)
    model.calibrate(make_pairs(2, seed=5))
    return out
