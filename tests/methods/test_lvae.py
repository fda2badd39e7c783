"""LVAE baseline: ELBO training, posterior samples through the shared predictor, calibration."""

import numpy as np
import pytest
import torch
from helpers import make_pairs

from hazematching.methods import build_method
from hazematching.nets import LadderVAE

TINY_LVAE = {"channels": 8, "z_channels": 4, "n_levels": 2}


@pytest.fixture(scope="module")
def run(train_tiny):
    return train_tiny("lvae", **TINY_LVAE)


def test_training_lowers_the_reconstruction_error_and_the_elbo(run) -> None:
    assert isinstance(run.model.method.net, LadderVAE)
    with torch.no_grad():
        terms = [m.eval().elbo_terms(run.target, run.cond) for m in (run.untrained,
                                                                     run.model.method)]
        errors = [(m.predict_batch(run.cond, torch.Generator().manual_seed(0))
                   - run.target).abs().mean().item() for m in (run.untrained, run.model.method)]
    print(f"lvae NLL {terms[0][0]:.4f} -> {terms[1][0]:.4f}, KL {terms[0][1]:.4f} -> "
          f"{terms[1][1]:.4f} nats/px; sample L1 {errors[0]:.4f} -> {errors[1]:.4f}")
    assert run.loss(run.model.method) < run.loss(run.untrained)
    assert terms[1][0] < terms[0][0]
    assert errors[1] < 0.8 * errors[0]


def test_samples_differ_and_are_seeded(run) -> None:
    method = run.model.method.eval()
    assert method.stochastic
    with torch.no_grad():
        a, b, c = (method.predict_batch(run.cond, torch.Generator().manual_seed(s))
                   for s in (0, 0, 1))
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-4


def test_save_load_gives_identical_samples_and_seeds_matter(run) -> None:
    run.check_stochastic_round_trip()


def test_mean_and_std_go_through_calibration(run, tmp_path) -> None:
    model = run.reloaded()
    assert model.calibration is not None  # fit calibrated it on its validation images
    model.calibration = None  # refit here from the raw std
    image = run.pairs.inputs[0][0, 0]
    raw = model.predict(image, "YX", n_samples=4, device="cpu", return_samples=True)
    assert raw.samples.shape == (4, 48, 48) and (raw.std > 0).all()
    np.testing.assert_allclose(raw.samples.mean(0), raw.mmse, rtol=1e-4, atol=1e-3)
    report = model.calibrate(make_pairs(2, seed=5), n_samples=4, n_bins=10, device="cpu",
                             plot=tmp_path / "calibration.png", save=False)
    print(f"lvae calibration a={report.calibration.a:.3f} b={report.calibration.b:.4f}, ENCE "
          f"{report.ence_before:.3f} -> {report.ence_after:.3f}")
    assert report.calibration.a > 0 and report.ence_after <= report.ence_before + 1e-9
    assert (tmp_path / "calibration.png").exists()
    calibrated = model.predict(image, "YX", n_samples=4, device="cpu")
    np.testing.assert_allclose(calibrated.mmse, raw.mmse, rtol=1e-6)
    scale = model.normalizer.target.scale
    np.testing.assert_allclose(calibrated.std, report.calibration.apply(raw.std / scale) * scale,
                               rtol=1e-4, atol=1e-6)


def test_patch_size_must_fit_the_latent_levels(method_config) -> None:
    with pytest.raises(ValueError, match="n_levels=6.*=32 must be divisible by 64"):
        build_method(method_config("lvae", **{**TINY_LVAE, "n_levels": 6}))
