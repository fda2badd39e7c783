"""Fidelity metrics against independent references and exact answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from hazematching.metrics import fidelity as fd


@pytest.fixture
def pair(smooth_image):
    rng = np.random.default_rng(1)
    target = smooth_image(rng, (192, 200))
    pred = 0.8 * target + 30 + rng.normal(0, 25, target.shape).astype(np.float32)
    return pred, target


def test_psnr_matches_skimage(pair):
    pred, target = pair
    rng = float(target.max() - target.min())
    assert fd.psnr(pred, target) == pytest.approx(
        peak_signal_noise_ratio(target, pred, data_range=rng), rel=1e-9)
    assert fd.psnr(pred, target, data_range=4000.0) == pytest.approx(
        peak_signal_noise_ratio(target, pred, data_range=4000.0), rel=1e-9)


def test_psnr_exact_constructed_case():
    target = np.array([[0.0, 10.0], [0.0, 10.0]])
    pred = target + 1.0  # MSE 1, range 10 → 20 dB
    assert fd.psnr(pred, target) == pytest.approx(20.0)
    assert fd.psnr(target, target) == np.inf


def _ri_psnr_reference(gt: np.ndarray, pred: np.ndarray) -> float:
    """Definition written out (juglab ScaleInvPSNR): standardise gt, zero-mean pred, rescale
    pred by the least-squares factor, PSNR with range (max - min) / std of gt."""
    gt = gt.astype(np.float64).ravel()
    pred = pred.astype(np.float64).ravel()
    rng = (gt.max() - gt.min()) / gt.std()
    g = (gt - gt.mean()) / gt.std()
    p = pred - pred.mean()
    p = p * (np.sum(g * p) / np.sum(p * p))
    return float(20 * np.log10(rng) - 10 * np.log10(np.mean((g - p) ** 2)))


def test_ri_psnr_matches_written_out_definition(pair):
    pred, target = pair
    assert fd.ri_psnr(pred, target) == pytest.approx(_ri_psnr_reference(target, pred), rel=1e-9)


def test_ri_psnr_is_invariant_to_affine_rescaling(pair):
    pred, target = pair
    assert fd.ri_psnr(3.0 * pred - 500.0, target) == pytest.approx(fd.ri_psnr(pred, target),
                                                                   rel=1e-9)
    # An exact affine copy of the target is perfect; a constant prediction leaves the target
    # variance as error: RI-PSNR = 10 log10(range² / var(target)).
    assert fd.ri_psnr(2.0 * target + 7.0, target) > 100
    const = np.full_like(target, 5.0)
    expected = 10 * np.log10(float(np.ptp(target)) ** 2 / np.var(target.astype(np.float64)))
    assert fd.ri_psnr(const, target) == pytest.approx(expected, rel=1e-9)


def test_ssim_matches_skimage_wang_settings(pair):
    pred, target = pair
    rng = float(target.max() - target.min())
    ref = structural_similarity(target.astype(np.float64), pred.astype(np.float64),
                                data_range=rng, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert fd.ssim(pred, target) == pytest.approx(ref, abs=2e-5)
    assert fd.ssim(target, target) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_matches_torchmetrics(pair):
    pred, target = pair
    rng = float(target.max() - target.min())
    ref = multiscale_structural_similarity_index_measure(
        torch.tensor(pred, dtype=torch.float64)[None, None],
        torch.tensor(target, dtype=torch.float64)[None, None], data_range=rng)
    assert fd.ms_ssim(pred, target) == pytest.approx(float(ref), abs=2e-5)
    assert fd.ms_ssim(target, target) == pytest.approx(1.0, abs=1e-6)


def test_micro_measures_match_microssim(pair):
    from microssim import MicroMS3IM, MicroSSIM

    pred, target = pair
    targets = [target, target[::-1].copy()]
    preds = [pred, pred[:, ::-1].copy()]
    params = fd.fit_micro(targets, preds)
    reference = MicroSSIM().fit([t.astype(np.float64) for t in targets],
                                [p.astype(np.float64) for p in preds])
    got = reference.get_parameters()
    assert params.ri_factor == pytest.approx(got["ri_factor"])
    assert params.offset_pred == pytest.approx(got["offset_pred"])
    kwargs = {"offset_gt": params.offset_target, "offset_pred": params.offset_pred,
              "max_val": params.max_val, "ri_factor": params.ri_factor}
    t64, p64 = target.astype(np.float64), pred.astype(np.float64)
    assert fd.micro_ssim(pred, target, params) == pytest.approx(
        MicroSSIM(**kwargs).score(t64, p64), abs=2e-5)
    assert fd.micro_ms3im(pred, target, params) == pytest.approx(
        float(MicroMS3IM(**kwargs).score(t64, p64)), abs=2e-5)


def test_batch_equals_single_calls(pair):
    pred, target = pair
    rng = np.random.default_rng(2)
    stack = np.stack([pred + rng.normal(0, 10, pred.shape) for _ in range(3)]).astype(np.float32)
    params = fd.MicroParams(offset_target=100.0, offset_pred=110.0, max_val=900.0,
                            ri_factor=1.1)
    batch = fd.structural_batch(stack, target, micro=params)
    for i, p in enumerate(stack):
        assert batch["ssim"][i] == pytest.approx(fd.ssim(p, target), abs=1e-6)
        assert batch["ms_ssim"][i] == pytest.approx(fd.ms_ssim(p, target), abs=1e-6)
        assert batch["micro_ssim"][i] == pytest.approx(fd.micro_ssim(p, target, params),
                                                       abs=1e-6)
    np.testing.assert_allclose(fd.psnr_batch(stack, target),
                               [fd.psnr(p, target) for p in stack], rtol=1e-12)
    np.testing.assert_allclose(fd.ri_psnr_batch(stack, target),
                               [fd.ri_psnr(p, target) for p in stack], rtol=1e-12)


def test_large_offset_keeps_precision(pair):
    """float32 moments are taken around the target mean, so a camera offset changes nothing."""
    pred, target = pair
    shifted = fd.ssim(pred.astype(np.float64) + 1e5, target.astype(np.float64) + 1e5)
    # Luminance legitimately changes with the absolute level; compare to skimage at that level.
    rng = float(target.max() - target.min())
    ref = structural_similarity(target.astype(np.float64) + 1e5, pred.astype(np.float64) + 1e5,
                                data_range=rng, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert shifted == pytest.approx(ref, abs=2e-5)


def test_errors_name_the_problem(pair):
    pred, target = pair
    with pytest.raises(ValueError, match="constant"):
        fd.psnr(pred, np.ones_like(target))
    with pytest.raises(ValueError, match="does not match target shape"):
        fd.ssim(pred[:-1], target)
    with pytest.raises(ValueError, match="at least 176"):
        fd.ms_ssim(pred[:100, :100], target[:100, :100])
    with pytest.raises(ValueError, match="fit_micro"):
        fd.structural_batch(pred, target, metrics=["micro_ssim"])
