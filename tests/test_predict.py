"""Tiled prediction: exact stitching, streaming statistics, batching, memory."""

import numpy as np
import pytest
import torch

from hazematching.config import ModelConfig
from hazematching.data.tiling import TileGrid
from hazematching.methods import build_method, register
from hazematching.methods.base import Method
from hazematching.noise_field import NoiseField
from hazematching.predict import CPU_BATCH_PIXELS, default_batch_size, predict_planes


def _method(name: str, **sampling):
    cfg = ModelConfig.from_dict({"method": name,
                                 "network": {"channel_mult": [1, 2, 2], "model_channels": 8,
                                             "attention_downsample": [4]},
                                 "sampling": {"tile_size": 32, "tile_overlap": 8, "batch_size": 7,
                                              "std_smoothing": 0.0, **sampling}})
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


@register
class NoiseEchoMethod(Method):
    """sample = cond + noise, one-call mean estimate = cond: the predictor's noise made visible."""

    name = "test-noise-echo"
    stochastic = True
    trainable = False
    takes_noise = True

    def posterior_batch(self, cond, noise, sampling=None):
        return cond[:, :1] + noise, cond[:, :1].clone()


@pytest.mark.parametrize("tile,overlap", [(32, 8), (48, 16), (128, 0)])
def test_stitched_samples_are_one_coherent_field(tile, overlap):
    # Every tile of a sample is cut from one noise field over the plane, so the stitched sample
    # is that field exactly (no seam, no blending of independent draws), whatever the tiling.
    m = _method("test-noise-echo", tile_size=tile, tile_overlap=overlap, seed=5,
                antithetic=False, std_smoothing=0.0, mmse="t0", std="t0")
    x = np.random.default_rng(6).normal(size=(2, 1, 75, 41)).astype(np.float32)
    samples = np.zeros((2, 3, 75, 41), np.float32)
    res = predict_planes(m, x, m.config.sampling, n_samples=3, samples_out=samples)
    field = NoiseField(5)
    for n in range(2):
        for s in range(3):
            np.testing.assert_allclose(samples[n, s] - x[n, 0], field.tile(n, s, 0, 0, 75, 41),
                                       atol=1e-5)
    # mmse = std = "t0": the mean of the one-call estimates (here exactly the condition), the
    # std taken about it with S degrees of freedom
    np.testing.assert_allclose(res.mean, x[:, 0], atol=1e-5)
    np.testing.assert_allclose(res.std, np.sqrt(((samples - x) ** 2).mean(1)), atol=1e-5)
    # mmse = std = "samples": the samples' own mean and unbiased std, as in the paper
    paper = m.config.sampling.model_copy(update={"mmse": "samples", "std": "samples"})
    res = predict_planes(m, x, paper, n_samples=3)
    np.testing.assert_allclose(res.mean, samples.mean(1), atol=1e-5)
    np.testing.assert_allclose(res.std, samples.std(1, ddof=1), atol=1e-5)


def test_antithetic_pairs_share_a_field_with_opposite_signs():
    m = _method("test-noise-echo", seed=2, antithetic=True, std_smoothing=0.0, mmse="samples",
                std="samples")
    x = np.random.default_rng(3).normal(size=(1, 1, 40, 50)).astype(np.float32)
    samples = np.zeros((1, 4, 40, 50), np.float32)
    res = predict_planes(m, x, m.config.sampling, n_samples=4, samples_out=samples)
    noise = samples[0] - x[0, 0]
    np.testing.assert_allclose(noise[1], -noise[0], atol=1e-5)
    np.testing.assert_allclose(noise[3], -noise[2], atol=1e-5)
    assert abs(np.corrcoef(noise[0].ravel(), noise[2].ravel())[0, 1]) < 0.1
    # the mean of a sample linear in its noise is exact with antithetic pairs
    np.testing.assert_allclose(res.mean, x[:, 0], atol=1e-5)


def test_std_smoothing_averages_the_variance_over_neighbours():
    m = _method("test-noise-echo", seed=4, antithetic=False, mmse="samples", std="samples",
                std_smoothing=0.0)
    x = np.zeros((1, 1, 64, 64), np.float32)
    raw = predict_planes(m, x, m.config.sampling, n_samples=4).std
    smooth_cfg = m.config.sampling.model_copy(update={"std_smoothing": 2.0})
    smooth = predict_planes(m, x, smooth_cfg, n_samples=4).std
    # the true std is 1 everywhere: smoothing keeps the level and shrinks the estimator's noise
    assert abs(np.mean(smooth**2) - np.mean(raw**2)) < 0.02
    assert smooth.std() < 0.5 * raw.std()


def test_one_sample_gives_no_std():
    m = _method("test-noise-echo")
    res = predict_planes(m, np.zeros((1, 1, 20, 20), np.float32), m.config.sampling,
                         n_samples=1)
    assert res.std is None and res.mean.shape == (1, 20, 20)


def test_weights_keep_their_layout_after_prediction():
    m = _method("hazematching", n_time_points=2)
    predict_planes(m, np.zeros((1, 1, 32, 32), np.float32), m.config.sampling, n_samples=1)
    assert all(p.is_contiguous() for p in m.parameters())


def _count_forward_calls(m) -> list[int]:
    """Counts the calls of the method's real network (a forward hook; nothing replaced)."""
    calls = [0]
    m.net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_progress_callback_counts_samples_of_tiles_up_to_the_total():
    m = _method("hazematching", n_time_points=3)
    x = np.random.default_rng(7).normal(size=(2, 1, 75, 41)).astype(np.float32)
    seen = []
    predict_planes(m, x, m.config.sampling, n_samples=3,
                   progress_callback=lambda done, total: seen.append((done, total)))
    n_tiles = 2 * len(list(TileGrid.make(75, 41, 32, 8, m.config.network.divisor).positions()))
    total = n_tiles * 3
    assert {t for _, t in seen} == {total}
    # first before any work, then after every batch of 7 (tile, sample) items
    assert [d for d, _ in seen] == [*range(0, total, 7), total]


def test_an_error_from_the_progress_callback_stops_the_prediction_at_once():
    m = _method("hazematching", n_time_points=3)
    x = np.random.default_rng(8).normal(size=(1, 1, 64, 64)).astype(np.float32)
    calls = _count_forward_calls(m)
    predict_planes(m, x, m.config.sampling, n_samples=4)
    full, calls[0] = calls[0], 0

    class Stop(Exception):
        pass

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 14:
            raise Stop

    with pytest.raises(Stop):
        predict_planes(m, x, m.config.sampling, n_samples=4,
                       progress_callback=stop_after_two_batches)
    n_tiles = len(list(TileGrid.make(64, 64, 32, 8, m.config.network.divisor).positions()))
    n_batches = -(-n_tiles * 4 // 7)  # (tile, sample) items in batches of 7
    assert n_batches > 2 and full % n_batches == 0
    assert calls[0] == 2 * full // n_batches
    assert all(p.is_contiguous() for p in m.parameters())  # the layout is given back


@pytest.mark.parametrize("shape,sigma", [((90, 37), 1.5), ((64, 64), 0.6), ((5, 40), 2.0)])
def test_variance_smoothed_in_bands_of_rows_equals_the_whole_plane(shape, sigma):
    import torch

    from hazematching.predict import _VarianceRows, smooth_variance

    var = np.random.default_rng(9).uniform(0, 2, shape).astype(np.float32)
    whole = smooth_variance(torch.from_numpy(var), sigma).numpy()
    rows = _VarianceRows(shape, sigma)
    cuts = [0, 3, 4, 20, 21, 50, shape[0]] if shape[0] > 50 else [0, 2, shape[0]]
    parts = [rows.push(var[a:b], b == shape[0]) for a, b in zip(cuts, cuts[1:])]
    assert [s for s, _ in parts] == sorted(s for s, _ in parts)
    np.testing.assert_array_equal(np.concatenate([p for _, p in parts]), whole)


class _Recorded:
    """A real zarr array that records the rows of every write (a spy, not a stand-in)."""

    def __init__(self, array):
        self.array, self.writes = array, []
        self.shape, self.chunks = array.shape, array.chunks

    def __setitem__(self, key, value):
        self.writes.append((key[0], key[-2].start, key[-2].stop))
        self.array[key] = value


def test_streaming_from_and_to_zarr_equals_in_memory_to_the_bit_one_write_per_chunk():
    zarr = pytest.importorskip("zarr")
    m = _method("test-noise-echo", seed=3, std_smoothing=1.0, batch_size=5, antithetic=True)
    x = np.random.default_rng(10).normal(size=(2, 1, 75, 41)).astype(np.float32)
    S = 4
    samples = np.zeros((2, S, 75, 41), np.float32)
    memory = predict_planes(m, x, m.config.sampling, n_samples=S, samples_out=samples)
    src = zarr.array(x, chunks=(1, 1, 16, 16))
    outs = {k: _Recorded(zarr.zeros(shape, chunks=(1,) * (len(shape) - 2) + (16, 16),
                                    dtype="f4"))
            for k, shape in (("mean", (2, 75, 41)), ("std", (2, 75, 41)),
                             ("samples", (2, S, 75, 41)))}
    res = predict_planes(m, src, m.config.sampling, n_samples=S, samples_out=outs["samples"],
                         mean_out=outs["mean"], std_out=outs["std"])
    assert res.mean is outs["mean"]
    np.testing.assert_array_equal(outs["mean"].array[:], memory.mean)
    np.testing.assert_array_equal(outs["std"].array[:], memory.std)
    np.testing.assert_array_equal(outs["samples"].array[:], samples)
    for out in outs.values():
        assert all(a % 16 == 0 and (b % 16 == 0 or b == 75) for _, a, b in out.writes)
        chunks = [(n, r // 16) for n, a, b in out.writes for r in range(a, b, 16)]
        assert sorted(chunks) == [(n, r) for n in range(2) for r in range(5)]  # each once


def test_a_share_of_the_planes_is_predicted_as_in_the_whole_stack():
    m = _method("test-noise-echo", seed=3, std_smoothing=1.0, batch_size=5)
    x = np.random.default_rng(11).normal(size=(4, 1, 40, 36)).astype(np.float32)
    whole = predict_planes(m, x, m.config.sampling, n_samples=3)
    mean, std = np.full((4, 40, 36), -1, np.float32), np.full((4, 40, 36), -1, np.float32)
    predict_planes(m, x, m.config.sampling, n_samples=3, mean_out=mean, std_out=std,
                   plane_indices=[1, 3])
    np.testing.assert_array_equal(mean[[1, 3]], whole.mean[[1, 3]])
    np.testing.assert_array_equal(std[[1, 3]], whole.std[[1, 3]])
    assert (mean[[0, 2]] == -1).all() and (std[[0, 2]] == -1).all()  # other planes untouched
    assert not np.array_equal(whole.mean[1], whole.mean[3])
    for bad in ([3, 1], [0, 4], [1, 1]):
        with pytest.raises(ValueError, match=r"plane_indices must increase within 0 … 3"):
            predict_planes(m, x, m.config.sampling, n_samples=3, plane_indices=bad)


def test_peak_memory_does_not_grow_with_the_image_height(tmp_path):
    import tracemalloc

    zarr = pytest.importorskip("zarr")
    m = _method("test-identity", tile_size=64, tile_overlap=16, batch_size=16)
    peaks = []
    for height in (256, 4096):
        x = zarr.array(np.random.default_rng(11).normal(size=(1, 1, height, 256))
                       .astype(np.float32), chunks=(1, 1, 64, 64))
        out = zarr.open(str(tmp_path / f"{height}.zarr"), mode="w", shape=(1, height, 256),
                        chunks=(1, 64, 64), dtype="f4")  # on disk: not in this process
        tracemalloc.start()
        predict_planes(m, x, m.config.sampling, mean_out=out)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        np.testing.assert_allclose(out[:], x[:, 0], atol=1e-5)
    image_bytes = 4096 * 256 * 4
    assert peaks[1] < 1.3 * peaks[0]
    assert peaks[1] < 0.5 * image_bytes  # a few bands of tile rows


def test_cpu_batch_is_a_pixel_budget():
    cpu = torch.device("cpu")
    assert default_batch_size(cpu, 240 * 240) == 1      # one tile: bigger calls cost more
    assert default_batch_size(cpu, 128 * 128) == CPU_BATCH_PIXELS // (128 * 128) == 4
    assert default_batch_size(cpu, 600 * 600) == 1      # never less than one tile
    assert default_batch_size(torch.device("cuda"), 240 * 240) == 64


def test_open_batch_size_calls_the_network_with_the_pixel_budget():
    m = _method("test-noisy", batch_size=None, tile_size=32, tile_overlap=8)
    seen: list[int] = []
    inner = m.predict_batch
    m.predict_batch = lambda cond, gen=None: (seen.append(cond.shape[0]), inner(cond, gen))[1]
    x = np.random.default_rng(0).normal(size=(1, 1, 200, 200)).astype(np.float32)
    predict_planes(m, x, m.config.sampling, n_samples=8, device="cpu")
    grid = TileGrid.make(200, 200, 32, 8, m.config.network.divisor)
    per_call = CPU_BATCH_PIXELS // (grid.tile_h * grid.tile_w)
    assert sum(seen) == grid.n_tiles * 8
    assert max(seen) == per_call and all(b <= per_call for b in seen)
