"""One seeded noise field per image, cut into tiles of any size."""

import numpy as np

from hazematching.noise_field import BLOCK, NoiseField


def test_tiles_of_any_size_cut_the_same_field():
    field = NoiseField(7)
    whole = field.tile(0, 3, 0, 0, 3 * BLOCK + 5, 2 * BLOCK + 9)
    for y, x, h, w in [(0, 0, 10, 10), (BLOCK - 3, 5, 40, 70), (100, 60, 97, 77), (1, 2, 1, 1)]:
        np.testing.assert_array_equal(field.tile(0, 3, y, x, h, w), whole[y:y + h, x:x + w])
    np.testing.assert_array_equal(NoiseField(7).tile(0, 3, 11, 12, 50, 50), whole[11:61, 12:62])


def test_planes_samples_and_seeds_give_independent_standard_normal_fields():
    fields = [NoiseField(1).tile(0, 0, 0, 0, 256, 256), NoiseField(1).tile(0, 1, 0, 0, 256, 256),
              NoiseField(1).tile(1, 0, 0, 0, 256, 256), NoiseField(2).tile(0, 0, 0, 0, 256, 256)]
    for f in fields:
        assert f.dtype == np.float32
        assert abs(f.mean()) < 0.02 and abs(f.std() - 1) < 0.02
    flat = np.stack([f.ravel() for f in fields])
    corr = np.corrcoef(flat)[np.triu_indices(4, 1)]
    assert np.abs(corr).max() < 0.02
    # neighbouring blocks are not copies of one another
    f = fields[0]
    assert abs(np.corrcoef(f[:BLOCK, :BLOCK].ravel(), f[:BLOCK, BLOCK:2 * BLOCK].ravel())[0, 1]
               ) < 0.1


def test_unseeded_fields_differ():
    assert not np.array_equal(NoiseField(None).tile(0, 0, 0, 0, 8, 8),
                              NoiseField(None).tile(0, 0, 0, 0, 8, 8))
