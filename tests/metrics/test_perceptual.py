"""LPIPS/FID weight handling and properties (stand-in weights), FSIM/GMSD, patches, ranges."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from hazematching.metrics import perceptual as pc

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def test_missing_weights_error_names_files_folder_and_urls(empty_torch_home):
    with pytest.raises(pc.MissingWeightsError) as info:
        pc.LPIPSScorer()
    err = info.value
    assert err.directory == empty_torch_home / "hub" / "checkpoints"
    assert err.missing == {ALEXNET_FILE: f"https://download.pytorch.org/models/{ALEXNET_FILE}"}
    msg = str(err)
    assert ALEXNET_FILE in msg and str(err.directory) in msg and "https://" in msg
    with pytest.raises(pc.MissingWeightsError, match=INCEPTION_FILE) as info:
        pc.FIDScorer(np.zeros((4, 64, 64)), weights_dir=empty_torch_home / "nowhere")
    assert info.value.missing[INCEPTION_FILE].startswith(
        "https://github.com/toshas/torch-fidelity/releases/")
    assert not empty_torch_home.exists() or not any(empty_torch_home.rglob("*.pth"))


def test_weights_folder_priority(tmp_path, monkeypatch, empty_torch_home):
    assert pc.weights_directory() == empty_torch_home / "hub" / "checkpoints"
    monkeypatch.setenv(pc.WEIGHTS_ENV, str(tmp_path / "env"))
    assert pc.weights_directory() == tmp_path / "env"
    assert pc.weights_directory(tmp_path / "arg") == tmp_path / "arg"


def _blurred(img: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_filter(img, sigma)


def test_lpips_from_standin_weights(standin_weights, empty_torch_home, smooth_image):
    hub_before = torch.hub.get_dir()
    scorer = pc.LPIPSScorer(weights_dir=standin_weights)
    # The temporary hub redirection is undone.
    assert torch.hub.get_dir() == hub_before
    assert os.environ["TORCH_HOME"] == str(empty_torch_home)
    rng = np.random.default_rng(0)
    img = smooth_image(rng, (128, 128), sigma=1.0)
    patches = pc.tile_patches(pc.to_unit_range(img))
    assert np.all(scorer(patches, patches) == 0.0)
    d1 = pc.lpips(_blurred(img, 1.0), img, weights_dir=standin_weights)
    d3 = pc.lpips(_blurred(img, 3.0), img, weights_dir=standin_weights)
    assert 0.0 < d1 < d3


def test_lpips_found_through_environment_variable(standin_weights, monkeypatch,
                                                  empty_torch_home):
    monkeypatch.setenv(pc.WEIGHTS_ENV, str(standin_weights))
    pc.LPIPSScorer()


def test_fid_from_standin_weights(standin_weights, fast_inception, smooth_image):
    rng = np.random.default_rng(1)
    imgs = [smooth_image(rng, (128, 128), sigma=1.0) for _ in range(2)]

    def patches(images):
        return np.concatenate([pc.tile_patches(pc.to_unit_range(i)) for i in images])

    scorer = pc.FIDScorer(patches(imgs), weights_dir=standin_weights)
    same = scorer(patches(imgs))
    mild = scorer(patches([_blurred(i, 1.0) for i in imgs]))
    strong = scorer(patches([_blurred(i, 3.0) for i in imgs]))
    assert abs(same) < 1e-3 * mild
    assert mild < strong


def test_fsim_and_gmsd_identity_and_blur(smooth_image):
    rng = np.random.default_rng(2)
    img = smooth_image(rng, (96, 96), sigma=1.0)
    stack = np.stack([img, _blurred(img, 1.0), _blurred(img, 3.0)])
    fs = pc.fsim_batch(stack, img)
    gm = pc.gmsd_batch(stack, img)
    assert fs[0] == pytest.approx(1.0, abs=1e-5) and fs[0] > fs[1] > fs[2]
    assert gm[0] == pytest.approx(0.0, abs=1e-6) and gm[0] < gm[1] < gm[2]
    assert pc.fsim(img, img) == pytest.approx(fs[0])
    assert pc.gmsd(stack[1], img) == pytest.approx(gm[1])


def test_tile_patches_order_and_remainder():
    img = np.arange(130 * 200).reshape(130, 200)
    p = pc.tile_patches(img)
    assert p.shape == (2 * 3, 64, 64)  # 2 rows × 3 columns; the 2- and 8-px edges dropped
    np.testing.assert_array_equal(p[0], img[:64, :64])
    np.testing.assert_array_equal(p[1], img[:64, 64:128])
    np.testing.assert_array_equal(p[3], img[64:128, :64])
    assert pc.tile_patches(np.stack([img, img])).shape == (2, 6, 64, 64)
    with pytest.raises(pc.MetricUnavailableError, match="smaller than one"):
        pc.tile_patches(img[:32])


def test_to_unit_range():
    x = np.array([[[2.0, 4.0], [6.0, 10.0]], [[1.0, 1.0], [1.0, 1.0]]])
    u = pc.to_unit_range(x)
    np.testing.assert_allclose(u[0], [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(u[1], 0.0)  # constant image
    np.testing.assert_allclose(pc.to_unit_range(x[0], (4.0, 8.0)), [[0, 0], [0.5, 1]])
    with pytest.raises(ValueError, match="high > low"):
        pc.to_unit_range(x, (1.0, 1.0))


def test_standin_files_have_the_exact_names(standin_weights: Path):
    assert pc.lpips_weight_files().keys() == {ALEXNET_FILE}
    assert pc.fid_weight_files().keys() == {INCEPTION_FILE}
    assert (standin_weights / ALEXNET_FILE).is_file()
    assert (standin_weights / INCEPTION_FILE).is_file()
