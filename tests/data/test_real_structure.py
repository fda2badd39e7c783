"""Real-structure ground truth: the shipped images, the regions and the crops drawn from them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from hazematching.data.real_structure import (
    REGION_CODE,
    SOURCES,
    RealStructureConfig,
    crop_origins,
    crop_window,
    load_structure,
    region_map,
    render_crop,
    simulate_real_structure,
)

FRACTIONS = (0.7, 0.15, 0.15)
# A tiny grid: 32-px images, 8 planes, 2-px margins.
TINY = RealStructureConfig(size=32, eval_size=40, depth=8, margin=2)


def components(mask: np.ndarray) -> np.ndarray:
    """Pixel counts of the connected components of a boolean image."""
    labels, _ = ndimage.label(mask)
    return np.bincount(labels.ravel())[1:]


def test_nuclei_are_separate_blobs():
    density = load_structure("nuclei")
    assert density.shape == (1, 512, 512) and density.dtype == np.float32
    assert density.min() == 0 and density.mean() == pytest.approx(1.0, rel=1e-5)
    sizes = components(ndimage.gaussian_filter(density[0], 1) > 1.0)
    nuclei = sizes[sizes > 100]
    # Tens of compact objects of a few hundred pixels, none of them a network.
    assert 30 <= len(nuclei) <= 150
    assert 200 <= np.median(nuclei) <= 2000
    assert nuclei.max() < 0.3 * nuclei.sum()


def test_membranes_are_one_network_around_many_cells():
    density = load_structure("membranes")
    assert density.shape == (30, 199, 206) and density.mean() == pytest.approx(1.0, rel=1e-5)
    plane = ndimage.gaussian_filter(density[np.argmax(density.mean(axis=(1, 2)))], 1)
    junctions = plane > np.percentile(plane, 60)
    assert components(junctions).max() > 0.7 * junctions.sum()
    cells = components(~junctions)
    assert (cells > 20).sum() >= 20


def test_unknown_source_is_named():
    with pytest.raises(ValueError, match="unknown structure 'actin'; choose from nuclei"):
        load_structure("actin")
    with pytest.raises(ValueError, match="must not repeat"):
        RealStructureConfig(sources=["nuclei", "nuclei"])


def test_region_map_areas_and_corners():
    regions = region_map((200, 300), FRACTIONS)
    for split, fraction in zip(("train", "val", "test"), FRACTIONS, strict=True):
        assert (regions == REGION_CODE[split]).mean() == pytest.approx(fraction, abs=0.005)
    assert regions[0, -1] == REGION_CODE["val"] and regions[-1, -1] == REGION_CODE["test"]
    assert regions[0, 0] == regions[-1, 0] == REGION_CODE["train"]
    with pytest.raises(ValueError, match="do not fit in a 40×300 image"):
        region_map((40, 300), (0.4, 0.3, 0.3))


@settings(max_examples=40, deadline=None)
@given(height=st.integers(20, 60), width=st.integers(20, 60),
       val=st.floats(0.02, 0.2), test=st.floats(0.02, 0.2), window=st.integers(1, 20),
       split=st.sampled_from(["train", "val", "test"]))
def test_crop_origins_are_exactly_the_windows_inside_the_region(height, width, val, test,
                                                                 window, split):
    try:
        regions = region_map((height, width), (1 - val - test, val, test))
    except ValueError:
        assume(False)  # squares too big for the image: covered by the test above
    inside = regions == REGION_CODE[split]
    expected = {(y, x) for y in range(height - window + 1) for x in range(width - window + 1)
                if inside[y:y + window, x:x + window].all()}
    if not expected:
        with pytest.raises(ValueError, match=f"no {window}×{window}-pixel crop fits"):
            crop_origins(regions, split, window)
        return
    assert {tuple(o) for o in crop_origins(regions, split, window).tolist()} == expected


@pytest.mark.parametrize("name", list(SOURCES))
def test_crops_stay_in_their_region_and_are_deterministic(name):
    config = TINY.model_copy(update={"sources": [name]})
    shape = load_structure(name).shape[1:]
    regions = region_map(shape, FRACTIONS)
    for split in ("train", "val", "test"):
        side = config.size if split == "train" else config.eval_size
        volume, crop = render_crop(name, split, config, side, np.random.default_rng(1),
                                   FRACTIONS)
        fine = (side + 2 * config.margin) * config.upsample
        assert volume.shape == (config.depth, fine, fine) and volume.min() >= 0
        # Auto-exposure: the mean column holds `concentration` fluorophores.
        assert volume.sum(axis=0).mean() == pytest.approx(config.concentration, rel=1e-4)
        y0, x0, h, w = crop["window_yxhw"]
        assert (h, w) == (crop_window(name, config, side)[0],) * 2
        assert (regions[y0:y0 + h, x0:x0 + w] == REGION_CODE[split]).all()
        again, _ = render_crop(name, split, config, side, np.random.default_rng(1), FRACTIONS)
        np.testing.assert_array_equal(volume, again)


def test_a_2d_image_becomes_a_slab_of_the_given_thickness():
    # 1.1 µm over 0.2-µm planes: 5 full planes and two quarters, centred on the focal plane.
    config = TINY.model_copy(update={"sources": ["nuclei"], "thickness_um": 1.1,
                                     "depth": 9, "dz_um": 0.2})
    volume, _ = render_crop("nuclei", "train", config, 32, np.random.default_rng(0), FRACTIONS)
    weights = volume.sum(axis=(1, 2)) / volume[4].sum()
    np.testing.assert_allclose(weights, [0, 0.25, 1, 1, 1, 1, 1, 0.25, 0], atol=1e-5)


def test_a_crop_larger_than_a_region_fails_before_simulating():
    with pytest.raises(ValueError, match="pixel crop fits in the val region"):
        simulate_real_structure(4, config=TINY.model_copy(update={"eval_size": 500}))
