"""What the full-disk test runs in its size-limited child process (see
:func:`reliability.processes.run_with_file_size_limit`): rewrite existing results with files
larger than the limit and report what each write raised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hazematching.config import ModelConfig
from hazematching.data.normalization import Normalizer
from hazematching.io import write_tiff
from hazematching.methods import build_method
from hazematching.model_io import save_model
from hazematching.training import AtomicCheckpointIO


def _attempt(write: Any) -> str:
    try:
        write()
    except Exception as err:  # noqa: BLE001 - reported to the test, which checks the type
        return f"{type(err).__name__}: {err}"
    return "no error"


def rewrite_everything(folder: str, config: dict[str, Any]) -> dict[str, str]:
    """Each existing result in `folder` written again, bigger: an image, a model, a checkpoint."""
    root = Path(folder)
    wide = ModelConfig.from_dict(config).with_overrides({"network.model_channels": 32})
    norm = Normalizer.from_dict(Normalizer.fit([np.arange(16.0)], [np.arange(16.0)[None, None]])
                                .to_dict())
    return {
        "image": _attempt(lambda: write_tiff(root / "pred" / "a_mmse.tif",
                                             np.ones((1024, 1024), np.float32), "YX")),
        "model": _attempt(lambda: save_model(root / "model", build_method(wide), norm)),
        "checkpoint": _attempt(lambda: AtomicCheckpointIO().save_checkpoint(
            {"state_dict": {"w": torch.ones(512, 1024)}}, root / "checkpoints" / "last.ckpt")),
    }


def rewrite_zarr_prediction(folder: str, config: dict[str, Any]) -> dict[str, str]:
    """Predict ``folder/in/big.tif`` as OME-Zarr into `folder/pred` over the outputs of the
    same stem (overwrite=True), its chunks larger than the size limit; report what it raised."""
    from hazematching import load_model

    root = Path(folder)
    model = load_model(root / "model")
    return {"zarr": _attempt(lambda: model.predict_file(
        root / "in" / "big.tif", root / "pred", n_samples=2, output_format="zarr",
        stem="a", overwrite=True, device="cpu"))}
