"""Fixtures of the fault tests (helpers are in :mod:`reliability.support`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY
from helpers import make_pairs

from hazematching.config import ModelConfig
from hazematching.data.normalization import Normalizer
from hazematching.methods import build_method
from hazematching.model_io import save_model




@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with the TINY network's initial weights (prediction needs no training)."""
    config = ModelConfig.from_dict(TINY)
    pairs = make_pairs(2)
    out = tmp_path_factory.mktemp("untrained") / "model"
    return save_model(out, build_method(config), Normalizer.fit(pairs.targets, pairs.inputs))
