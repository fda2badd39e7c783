"""Background subtraction + Richardson–Lucy: the non-learned baseline."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_pairs

from hazematching.api import Model, load_model
from hazematching.methods import build_method
from hazematching.methods.richardson_lucy import richardson_lucy


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def _blur(x: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    r = psf.shape[-1] // 2
    return F.conv2d(F.pad(x, (r,) * 4, mode="reflect"), psf.flip(-2, -1)[None, None])


@pytest.fixture
def scene() -> torch.Tensor:
    """Sparse points and a line on a dark background, (1, 1, 64, 64)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 1, 64, 64)
    idx = torch.randint(4, 60, (2, 12), generator=gen)
    x[0, 0, idx[0], idx[1]] = 1.0
    x[0, 0, 30, 10:50] = 0.5
    return x


def test_psf_is_a_normalised_centred_widefield_spot(method_config) -> None:
    psf = build_method(method_config("richardson_lucy", psf_size=11)).psf
    assert psf.shape == (11, 11)
    assert torch.isclose(psf.sum(), torch.tensor(1.0))
    assert psf.argmax() == 5 * 11 + 5
    assert "psf" not in build_method(method_config("richardson_lucy")).state_dict()


def test_deconvolution_brings_a_blurred_image_closer_to_the_truth(method_config, scene) -> None:
    method = build_method(method_config("richardson_lucy", background="percentile",
                                        background_percentile=0.0, iterations=30,
                                        pixel_size_um=0.065))
    blurred = _blur(scene, method.psf)
    # Normalised inputs are offset and scaled: RL must cope with negative values.
    observed = (blurred - blurred.mean()) / blurred.std()
    restored = method.predict_batch(observed)
    assert restored.shape == observed.shape and restored.min() >= 0
    before, after = _correlation(blurred, scene), _correlation(restored, scene)
    print(f"correlation with the truth: blurred {before:.3f} -> RL {after:.3f}")
    assert after > before + 0.1


def test_gaussian_background_removes_smooth_haze(method_config, scene) -> None:
    method = build_method(method_config("richardson_lucy", background_sigma_px=8.0))
    yy = torch.linspace(0, 1, 64)[:, None]
    haze = 2.0 + yy + 0.5 * yy.T
    hazy = _blur(scene, method.psf) + haze
    restored = method.predict_batch(hazy)
    assert _correlation(restored, scene) > _correlation(hazy, scene) + 0.3


def test_richardson_lucy_preserves_flux_and_batches() -> None:
    psf = torch.tensor([[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]])
    images = torch.rand(3, 1, 16, 20)
    out = richardson_lucy(images, psf, iterations=5)
    torch.testing.assert_close(out.sum((-2, -1)), images.sum((-2, -1)), rtol=0.02, atol=0)
    torch.testing.assert_close(out[1:2], richardson_lucy(images[1:2], psf, iterations=5))


def test_runs_under_bf16_autocast(method_config, scene) -> None:
    method = build_method(method_config("richardson_lucy"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method.predict_batch(scene)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, method.predict_batch(scene))


def test_fit_skips_training_and_round_trips(method_config, tmp_path) -> None:
    model = Model(method_config("richardson_lucy", iterations=5)).fit(make_pairs(3),
                                                                     out_dir=tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    image = make_pairs(1, size=40).inputs[0][0, 0]
    pred = model.predict(image, device="cpu")
    assert pred.std is None and pred.mmse.shape == (40, 40)
    np.testing.assert_array_equal(pred.mmse, load_model(tmp_path).predict(image,
                                                                          device="cpu").mmse)


def test_even_psf_size_is_rejected(method_config) -> None:
    with pytest.raises(ValueError, match="psf_size must be odd"):
        method_config("richardson_lucy", psf_size=10)
