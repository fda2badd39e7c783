"""Shared fixtures: stand-in LPIPS/FID weight files, so tests never need the real downloads.

The stand-ins are randomly initialised networks of the exact classes the libraries load,
saved under the exact file names. Loading them runs the libraries' real code paths: torch.hub
only checks the SHA-256 prefix in a file name while downloading, and torch-fidelity loads its
path without any check, so no hash has to be bypassed.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def _zero_stride(shape: torch.Size) -> torch.Tensor:
    # An expanded scalar is saved as one element, keeping unused layers out of the file size.
    return torch.zeros(()).expand(shape)


def _write_alexnet(path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.alexnet(weights=None).state_dict()
    # LPIPS uses only `features`; the 230 MB classifier is stored as zero-stride zeros.
    state = {k: v if k.startswith("features") else _zero_stride(v.shape)
             for k, v in state.items()}
    torch.save(state, path)


def _write_inception(path: Path) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    torch.manual_seed(0)
    # The constructor insists on loading weights; let it load nothing so we get a random net.
    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict",
                              lambda self, state, strict=True: None):
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["768"])
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            # Variance-preserving init keeps the 768-d features O(1) instead of vanishing.
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    # Layers after the 768-d feature output (Mixed_7*, fc) are unused by FID-768.
    state = {k: _zero_stride(v.shape) if k.startswith(("Mixed_7", "fc")) else v
             for k, v in net.state_dict().items()}
    torch.save(state, path)


@pytest.fixture(scope="session")
def standin_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder holding both stand-in files under their real names."""
    folder = tmp_path_factory.mktemp("weights")
    _write_alexnet(folder / ALEXNET_FILE)
    _write_inception(folder / INCEPTION_FILE)
    return folder


@pytest.fixture
def fast_inception(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run Inception at 75×75 instead of 299×299 (its minimum size): 16× less compute, same
    loading code and the same FID properties."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    monkeypatch.setattr(NoTrainInceptionV3, "INPUT_IMAGE_SIZE", 75)


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME and no HAZEMATCHING_WEIGHTS_DIR: no weights anywhere."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("HAZEMATCHING_WEIGHTS_DIR", raising=False)
    return home


def _smooth_image(rng: np.random.Generator, shape: tuple[int, int], sigma: float = 2.0,
                  offset: float = 100.0, scale: float = 1000.0) -> np.ndarray:
    img = gaussian_filter(rng.random(shape), sigma)
    img = (img - img.min()) / (img.max() - img.min())
    return (offset + scale * img).astype(np.float32)


@pytest.fixture
def smooth_image():
    """Factory for structured float32 test images (smoothed noise, microscopy-like offset and
    scale): ``smooth_image(rng, shape, sigma=2, offset=100, scale=1000)``."""
    return _smooth_image
