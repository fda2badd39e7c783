"""Tiled prediction: exact stitching, streaming statistics, batching, memory."""

import numpy as np
import pytest

from hazematching.config import ModelConfig
from hazematching.methods import build_method
from hazematching.predict import predict_planes


def _method(name: str, **sampling):
    cfg = ModelConfig.from_dict({"method": name,
                                 "network": {"channel_mult": [1, 2, 2], "model_channels": 8,
                                             "attention_downsample": [4]},
                                 "sampling": {"tile_size": 32, "tile_overlap": 8, "batch_size": 7,
                                              **sampling}})
    return build_method(cfg)


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (2, 1, 75, 41), (1, 1, 10, 13),
                                   (3, 2, 64, 100)])
def test_identity_is_stitched_exactly(shape):
    m = _method("test-identity")
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    res = predict_planes(m, x, m.config.sampling)
    assert res.std is None
    np.testing.assert_allclose(res.mean, x[:, 0], atol=1e-5)


def test_streaming_mean_std_match_the_samples():
    m = _method("test-noisy")
    x = np.random.default_rng(1).normal(size=(2, 1, 32, 32)).astype(np.float32)
    samples = np.zeros((2, 5, 32, 32), np.float32)
    res = predict_planes(m, x, m.config.sampling, n_samples=5, samples_out=samples)
    # one tile per plane: the stitched samples are the raw samples
    np.testing.assert_allclose(res.mean, samples.mean(1), atol=1e-5)
    np.testing.assert_allclose(res.std, samples.std(1, ddof=1), atol=1e-5)


def test_posterior_statistics_of_known_distribution():
    m = _method("test-noisy")
    x = np.zeros((1, 1, 80, 70), np.float32)
    res = predict_planes(m, x, m.config.sampling, n_samples=64)
    assert abs(res.mean.mean()) < 0.02
    assert res.std.mean() == pytest.approx(1.0, abs=0.03)


def test_seed_reproducible_and_different_seeds_differ():
    m = _method("test-noisy", seed=3)
    x = np.zeros((1, 1, 40, 40), np.float32)
    a = predict_planes(m, x, m.config.sampling, n_samples=3).mean
    b = predict_planes(m, x, m.config.sampling, n_samples=3).mean
    np.testing.assert_array_equal(a, b)
    s2 = m.config.sampling.model_copy(update={"seed": 4})
    assert not np.array_equal(a, predict_planes(m, x, s2, n_samples=3).mean)


def test_network_always_runs_on_full_batches():
    m = _method("test-noisy", batch_size=8)
    sizes = []
    orig = m.predict_batch
    m.predict_batch = lambda cond, gen=None: (sizes.append(cond.shape[0]), orig(cond, gen))[1]
    x = np.zeros((3, 1, 32, 32), np.float32)  # 3 tiles × 5 samples = 15 items
    predict_planes(m, x, m.config.sampling, n_samples=5)
    assert sizes == [8, 7]


def test_hazematching_predicts_any_size():
    m = _method("hazematching", n_time_points=3)
    m.net = m.net.eval()
    x = np.random.default_rng(2).normal(size=(1, 1, 50, 70)).astype(np.float32)
    res = predict_planes(m, x, m.config.sampling, n_samples=2)
    assert res.mean.shape == (1, 50, 70) and res.std.shape == (1, 50, 70)
    assert np.isfinite(res.mean).all() and (res.std >= 0).all()


def test_bad_shape():
    m = _method("test-identity")
    with pytest.raises(ValueError, match=r"\(N, C, Y, X\)"):
        predict_planes(m, np.zeros((32, 32), np.float32), m.config.sampling)


def test_largest_image_is_stitched_exactly():
    m = _method("test-identity", tile_size=128, tile_overlap=32, batch_size=64)
    x = np.random.default_rng(4).normal(size=(1, 1, 4096, 4096)).astype(np.float32)
    res = predict_planes(m, x, m.config.sampling)
    np.testing.assert_allclose(res.mean, x[:, 0], atol=1e-5)


def test_peak_memory_does_not_grow_with_samples():
    import tracemalloc

    m = _method("test-noisy", tile_size=128, tile_overlap=32, batch_size=64)
    x = np.zeros((1, 1, 2048, 2048), np.float32)
    peaks = []
    for n in (2, 16):
        tracemalloc.start()
        predict_planes(m, x, m.config.sampling, n_samples=n)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    image_bytes = x.nbytes
    assert peaks[1] < 1.05 * peaks[0]
    assert peaks[1] < 8 * image_bytes  # input copy, mean, var, weights and a few tiles


def test_unseeded_sampling_differs_between_calls():
    m = _method("test-noisy", seed=None)
    x = np.zeros((1, 1, 32, 32), np.float32)
    a = predict_planes(m, x, m.config.sampling, n_samples=2).mean
    b = predict_planes(m, x, m.config.sampling, n_samples=2).mean
    assert not np.array_equal(a, b)
