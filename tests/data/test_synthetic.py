"""Synthetic pairs: physics (haze, resolution, camera noise), determinism and the paper layout."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from hazematching.data import synthetic
from hazematching.data.synthetic import (
    CameraConfig,
    SyntheticConfig,
    apply_camera,
    simulate_pairs,
    split_counts,
    write_pairs,
)
from hazematching.io import list_images, read_image

SMALL = dict(size=48, depth=12)


def high_frequency_fraction(images: np.ndarray, cutoff: float = 0.25) -> float:
    """Share of the (non-DC) power above `cutoff` cycles/pixel, radially averaged over images."""
    spectrum = np.abs(np.fft.fft2(images - images.mean(axis=(-2, -1), keepdims=True))) ** 2
    fy = np.fft.fftfreq(images.shape[-2])[:, None]
    fx = np.fft.fftfreq(images.shape[-1])[None, :]
    radius = np.hypot(fy, fx)
    power = spectrum.mean(axis=0)
    return float(power[radius > cutoff].sum() / power[radius > 0].sum())


@pytest.fixture(scope="module")
def clean_pairs() -> tuple[np.ndarray, np.ndarray]:
    # Practically noise-free and without uniform background: what remains is optics.
    return simulate_pairs(6, seed=3, photons=1e7, read_noise=0.0, background=0.0, **SMALL)


def test_shapes_dtypes_and_units():
    target, widefield = simulate_pairs(3, 32, seed=0, depth=8)
    assert target.shape == widefield.shape == (3, 32, 32)
    assert target.dtype == widefield.dtype == np.float32
    assert np.isfinite(target).all() and np.isfinite(widefield).all()
    # Widefield: offset + gain·qe·(signal + background) on average.
    cam = CameraConfig()
    assert widefield.mean() == pytest.approx(cam.offset + cam.gain * cam.qe * 110, rel=0.05)


def test_same_seed_same_data_different_seed_different_data():
    a = simulate_pairs(3, seed=7, **SMALL)
    b = simulate_pairs(3, seed=7, **SMALL)
    c = simulate_pairs(3, seed=8, **SMALL)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])
    # Pair i depends only on (seed, i): a shorter run is a prefix of a longer one.
    np.testing.assert_array_equal(simulate_pairs(2, seed=7, **SMALL)[1], a[1][:2])


def test_widefield_has_less_high_frequency_power_than_target(clean_pairs):
    target, widefield = clean_pairs
    assert high_frequency_fraction(widefield) < 0.5 * high_frequency_fraction(target)


def test_widefield_has_more_out_of_focus_background(clean_pairs):
    target, widefield = clean_pairs
    offset = CameraConfig().offset

    def floor_fraction(img: np.ndarray) -> float:
        # Darkest decile relative to the mean signal: haze lifts the floor of the image.
        signal = img - offset
        return float(np.percentile(signal, 10) / signal.mean())

    for t, w in zip(target, widefield):
        assert floor_fraction(w) > 0.05
        assert floor_fraction(w) > 5 * floor_fraction(t)


def test_deeper_volume_gives_more_haze():
    kw = dict(size=48, photons=1e7, read_noise=0.0, background=0.0, in_focus_fraction=0.0)
    shallow = simulate_pairs(4, seed=1, depth=4, **kw)[1]
    deep = simulate_pairs(4, seed=1, depth=24, **kw)[1]
    assert high_frequency_fraction(deep) < high_frequency_fraction(shallow)


def test_camera_flat_field_mean_and_variance():
    camera = CameraConfig(qe=0.7, read_noise=3.0, gain=2.0, offset=50.0)
    photons = np.full((256, 256), 40.0)
    adu = apply_camera(photons, camera, np.random.default_rng(0))
    n = adu.size
    mean = camera.offset + camera.gain * camera.qe * 40.0
    var = camera.gain**2 * (camera.qe * 40.0 + camera.read_noise**2)
    assert adu.dtype == np.float32
    assert abs(adu.mean() - mean) < 5 * np.sqrt(var / n)
    assert adu.var() == pytest.approx(var, rel=5 * np.sqrt(2 / n))
    with pytest.raises(ValueError, match=">= 0"):
        apply_camera(-photons, camera, np.random.default_rng(0))


def test_target_noise_option():
    clean, _ = simulate_pairs(2, seed=0, **SMALL)
    noisy, _ = simulate_pairs(2, seed=0, target_noise=True, **SMALL)
    assert np.abs(noisy - clean).mean() > 1.0
    assert noisy.mean() == pytest.approx(clean.mean(), rel=0.02)


@pytest.mark.parametrize("structure", ["filaments", "blobs"])
def test_single_structure_kinds(structure):
    target, widefield = simulate_pairs(2, seed=0, structure=structure, **SMALL)
    assert target.std() > 0 and widefield.std() > 0


def test_config_is_validated():
    with pytest.raises(pydantic.ValidationError, match="photons"):
        simulate_pairs(1, photons=-1)
    with pytest.raises(pydantic.ValidationError, match="not_a_field"):
        simulate_pairs(1, not_a_field=1)
    with pytest.raises(pydantic.ValidationError, match="structure"):
        SyntheticConfig(structure="cells")
    with pytest.raises(ValueError, match="n must be"):
        simulate_pairs(0)


def test_split_counts():
    assert split_counts(10, (0.8, 0.1, 0.1)) == {"train": 8, "val": 1, "test": 1}
    assert split_counts(3, (0.8, 0.1, 0.1)) == {"train": 1, "val": 1, "test": 1}
    assert split_counts(5, (1.0, 0.0, 0.0)) == {"train": 5, "val": 0, "test": 0}
    with pytest.raises(ValueError, match="sum to 1"):
        split_counts(10, (0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="too few"):
        split_counts(2, (0.8, 0.1, 0.1))


def test_write_pairs_paper_layout(tmp_path):
    target, widefield = simulate_pairs(5, seed=0, size=32, depth=6)
    out = tmp_path / "ds"
    paths = write_pairs(out, target, widefield, split_fractions=(0.6, 0.2, 0.2),
                        metadata={"seed": 0}, pixel_size_um=0.1)
    assert [len(paths[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert (out / "simulation.yaml").read_text().strip() == "seed: 0"
    files = [p for s in ("train", "val", "test") for p in list_images(out / s)]
    for i, path in enumerate(files):
        pair, axes = read_image(path)
        assert axes == "CYX" and pair.dtype == np.float32
        np.testing.assert_array_equal(pair[0], target[i])
        np.testing.assert_array_equal(pair[1], widefield[i])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary leftovers


def test_write_pairs_refuses_existing_and_overwrites_atomically(tmp_path):
    target, widefield = simulate_pairs(3, seed=0, size=32, depth=6)
    out = tmp_path / "ds"
    write_pairs(out, target, widefield)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_pairs(out, target, widefield)
    write_pairs(out, target[:3] + 1, widefield, overwrite=True)
    pair, _ = read_image(out / "train" / "00000.tif")
    np.testing.assert_array_equal(pair[0], target[0] + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    target, widefield = simulate_pairs(4, seed=0, size=32, depth=6)
    calls = []

    def failing_write(path, array, axes, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return path

    monkeypatch.setattr(synthetic, "write_tiff", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_pairs(tmp_path / "ds", target, widefield)
    assert list(tmp_path.iterdir()) == []


def test_write_pairs_rejects_mismatched_arrays(tmp_path):
    with pytest.raises(ValueError, match="equal shapes"):
        write_pairs(tmp_path / "ds", np.zeros((2, 8, 8)), np.zeros((2, 8, 9)))
