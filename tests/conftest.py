"""Shared fixtures: tiny configs, paired images on disk, and small test-only methods."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import StaticServer, make_pairs, write_paper_layout

from hazematching.config import ModelConfig
from hazematching.methods import register
from hazematching.methods.base import Method, randn

# One thread: the tests use tiny networks, where threads buy little, and several test
# processes on one small machine would oversubscribe its cores (OpenMP spin-waits).
torch.set_num_threads(1)


@register
class IdentityMethod(Method):
    """Returns its first condition channel: makes tiling and stitching exactly checkable."""

    name = "test-identity"
    trainable = False

    def predict_batch(self, cond, generator=None):
        return cond[:, :1].clone()


@register
class NoisyIdentityMethod(Method):
    """cond + N(0, 1): a stochastic method with known posterior mean and std."""

    name = "test-noisy"
    stochastic = True
    trainable = False

    def predict_batch(self, cond, generator=None):
        return cond[:, :1] + randn((cond.shape[0], 1, *cond.shape[2:]), cond, generator)


TINY = {
    "data": {"patch_size": 32},
    "network": {"model_channels": 8, "channel_mult": [1, 2], "attention_downsample": [2]},
    # Validated and logged at every (tiny) epoch and step, which the tests count; the defaults
    # (every 5 minutes, logs every 50 steps) are tested in test_training.py.
    "training": {"epochs": 2, "batch_size": 4, "progress_bar": False, "ema_decay": 0.9,
                 "val_every_n_epochs": 1, "log_every_n_steps": 1},
    "sampling": {"tile_size": 32, "tile_overlap": 8, "n_samples": 4, "batch_size": 8,
                 "n_time_points": 4},
}


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig.from_dict(TINY)


@pytest.fixture
def paper_dataset(tmp_path: Path) -> Path:
    """A dataset root with train/ and val/ in the paper layout."""
    root = tmp_path / "dataset"
    write_paper_layout(root / "train", make_pairs(4, seed=1))
    write_paper_layout(root / "val", make_pairs(2, seed=2))
    return root


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[StaticServer]:
    """A :class:`helpers.StaticServer` serving ``tmp_path / "www"``, stopped afterwards."""
    with StaticServer(tmp_path / "www") as server:
        yield server
