import numpy as np
import pytest
from helpers import make_pairs

from hazematching.data.normalization import Normalizer
from hazematching.data.patches import FixedPatches, RandomPatches
from hazematching.io import ImageError


def _norm(p):
    return Normalizer.fit(p.targets, p.inputs)


def test_random_patches_shapes_determinism_and_epochs():
    p = make_pairs(3)
    ds = RandomPatches(p, _norm(p), 16, length=10, seed=1)
    t, c = ds[0]
    assert t.shape == (1, 16, 16) and c.shape == (1, 16, 16)
    np.testing.assert_array_equal(ds[3][0], ds[3][0])
    first = ds[3][0].clone()
    ds.epoch = 1
    assert not np.array_equal(first, ds[3][0])
    assert len(ds) == 10
    assert len(RandomPatches(p, _norm(p), 16)) == 3 * (48 * 48) // 256


def test_augmentation_keeps_pairs_aligned():
    p = make_pairs(2)
    p.inputs = [t[:, None].copy() for t in p.targets]  # input == target
    n = Normalizer.fit(p.targets, p.targets and p.inputs)
    ds = RandomPatches(p, n, 16, length=20)
    for i in range(20):
        t, c = ds[i]
        np.testing.assert_allclose(t * n.target.scale + n.target.offset,
                                   c * n.inputs[0].scale + n.inputs[0].offset, rtol=1e-5,
                                   atol=1e-2)


def test_fixed_patches_cover_grid_and_cap():
    p = make_pairs(2)
    assert len(FixedPatches(p, _norm(p), 16)) == 2 * 9
    assert len(FixedPatches(p, _norm(p), 16, max_patches=5)) == 5


def test_image_smaller_than_patch():
    p = make_pairs(1, size=20)
    with pytest.raises(ImageError, match="img0: image of size 20×20 is smaller than the patch"):
        RandomPatches(p, _norm(p), 32)
