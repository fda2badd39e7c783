import numpy as np
import pytest

from hazematching.data.normalization import ChannelStats, Normalizer


def test_meanstd_matches_numpy_and_roundtrips():
    rng = np.random.default_rng(0)
    t = [rng.normal(50, 5, (2, 8, 8)), rng.normal(50, 5, (1, 8, 9))]
    x = [rng.normal(200, 20, (2, 1, 8, 8)), rng.normal(200, 20, (1, 1, 8, 9))]
    n = Normalizer.fit(t, x)
    allt = np.concatenate([a.ravel() for a in t])
    assert n.target.offset == pytest.approx(allt.mean()) and n.target.scale == pytest.approx(
        allt.std())
    z = n.normalize_target(t[0])
    np.testing.assert_allclose(n.denormalize_target(z), t[0], rtol=1e-5)
    assert Normalizer.from_dict(n.to_dict()) == n


def test_percentile():
    t = [np.arange(1001, dtype=float)[None, None]]
    x = [np.arange(1001, dtype=float)[None, None, None]]
    n = Normalizer.fit(t, x, "percentile", (1.0, 99.0))
    assert n.target.offset == pytest.approx(10) and n.target.scale == pytest.approx(980)


def test_constant_channel_and_channel_count():
    with pytest.raises(ValueError, match="is the channel constant"):
        Normalizer.fit([np.ones((1, 4, 4))], [np.ones((1, 1, 4, 4))])
    n = Normalizer("meanstd", ChannelStats(0, 1), (ChannelStats(0, 1),))
    with pytest.raises(ValueError, match="expects 1 input channel"):
        n.normalize_input(np.zeros((1, 2, 4, 4)))
