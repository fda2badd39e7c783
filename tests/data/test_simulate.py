"""microsim pairs and pairs from a user's z-stack."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from hazematching.data.simulate import (
    MicrosimConfig,
    StackConfig,
    simulate_from_stack,
    simulate_microsim,
    stack_focal_planes,
)
from hazematching.data.synthetic import SyntheticConfig, render_volume

TINY_MICROSIM = dict(size=32, depth=16, upsample=2)  # 16×64×64 ground truth → 32×32 images
VOXEL = (0.25, 0.1, 0.1)


def high_frequency_fraction(images: np.ndarray, cutoff: float = 0.25) -> float:
    """Share of the (non-DC) power above `cutoff` cycles/pixel, radially averaged over images."""
    spectrum = np.abs(np.fft.fft2(images - images.mean(axis=(-2, -1), keepdims=True))) ** 2
    radius = np.hypot(np.fft.fftfreq(images.shape[-2])[:, None],
                      np.fft.fftfreq(images.shape[-1])[None, :])
    power = spectrum.mean(axis=0)
    return float(power[radius > cutoff].sum() / power[radius > 0].sum())


def floor_fraction(img: np.ndarray, offset: float) -> float:
    """Darkest decile over the mean signal: out-of-focus haze lifts the floor."""
    signal = img.astype(np.float64) - offset
    return float(np.percentile(signal, 10) / signal.mean())


# ------------------------------------------------------------------------------------ microsim


@pytest.fixture(scope="module")
def microsim_pairs():
    pytest.importorskip("microsim")
    return simulate_microsim(3, seed=0, **TINY_MICROSIM)


@pytest.mark.slow  # the first microsim call imports it and builds both PSFs (~4 s)
def test_microsim_shapes_physics_and_camera(microsim_pairs):
    target, widefield = microsim_pairs
    assert target.shape == widefield.shape == (3, 32, 32)
    assert target.dtype == widefield.dtype == np.float32
    offset = MicrosimConfig().offset
    # Camera offset plus a usable photon budget (not the near-empty default of microsim).
    assert widefield.min() >= 0 and widefield.mean() > offset + 20
    # Confocal: sharper and with less out-of-focus floor than widefield.
    assert high_frequency_fraction(widefield) < high_frequency_fraction(target)
    assert np.mean([floor_fraction(w, offset) for w in widefield]) > 2 * np.mean(
        [floor_fraction(t, offset) for t in target])


def test_microsim_is_deterministic_and_leaves_no_global_state(microsim_pairs):
    state = np.random.get_state()[1].copy()
    env = os.environ.get("MICROSIM_CACHE")
    again = simulate_microsim(2, seed=0, **TINY_MICROSIM)
    other = simulate_microsim(1, seed=1, **TINY_MICROSIM)
    # Pair i depends only on (seed, i): the first two of the 3-pair run are reproduced.
    np.testing.assert_array_equal(again[0], microsim_pairs[0][:2])
    np.testing.assert_array_equal(again[1], microsim_pairs[1][:2])
    assert not np.array_equal(other[1][0], microsim_pairs[1][0])
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert os.environ.get("MICROSIM_CACHE") == env


@pytest.mark.parametrize("structure", ["filaments", "blobs"])
def test_microsim_structures(structure):
    pytest.importorskip("microsim")
    kw = dict(seed=0, structure=structure, size=32, depth=8)
    target, widefield = simulate_microsim(2, **kw)
    assert target.std() > 0 and widefield.std() > 0
    np.random.seed(123)  # the global generator's state must not leak into the result
    np.testing.assert_array_equal(simulate_microsim(2, **kw)[1], widefield)


def test_microsim_missing_gives_install_hint(monkeypatch):
    for name in [m for m in sys.modules if m == "microsim" or m.startswith("microsim.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "microsim", None)  # makes `import microsim` fail
    with pytest.raises(ImportError, match=r"pip install 'hazematching\[simulate\]'"):
        simulate_microsim(1, size=32, depth=8)


def test_microsim_config_is_validated():
    with pytest.raises(ValueError, match="immersion_ri"):
        MicrosimConfig(na=1.6)
    with pytest.raises(ValueError, match="upsample"):
        simulate_microsim(1, upsample=0)


# --------------------------------------------------------------------------------- from stacks


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    # Dense enough that every plane holds structure (an empty plane has no target to learn).
    cfg = SyntheticConfig(size=48, depth=20, dz_um=VOXEL[0], filament_density=300,
                          blob_density=300)
    return render_volume(np.random.default_rng(0), cfg) * 100


def test_stack_pairs_shapes_and_haze(stack):
    target, widefield = simulate_from_stack(stack, VOXEL, photons=1e7, read_noise=0.0,
                                            background=0.0)
    planes = stack_focal_planes(20, VOXEL[0], StackConfig())
    np.testing.assert_array_equal(planes, np.arange(4, 16))  # 1 µm = 4 planes each side
    assert target.shape == widefield.shape == (12, 48, 48)
    assert target.dtype == widefield.dtype == np.float32
    assert high_frequency_fraction(widefield) < 0.5 * high_frequency_fraction(target)
    offset = StackConfig().offset
    assert np.mean([floor_fraction(w, offset) for w in widefield]) > 3 * np.mean(
        [floor_fraction(t, offset) for t in target])


def test_stack_confocal_target_and_plane_selection(stack):
    target, widefield = simulate_from_stack(stack, VOXEL, target="confocal", n_planes=3,
                                            photons=1e7, read_noise=0.0)
    assert target.shape == widefield.shape == (3, 48, 48)
    np.testing.assert_array_equal(stack_focal_planes(20, VOXEL[0], StackConfig(n_planes=3)),
                                  [4, 10, 15])
    assert high_frequency_fraction(widefield) < high_frequency_fraction(target)


def test_stack_seed(stack):
    a = simulate_from_stack(stack, VOXEL, n_planes=2, seed=1)
    b = simulate_from_stack(stack, VOXEL, n_planes=2, seed=1)
    c = simulate_from_stack(stack, VOXEL, n_planes=2, seed=2)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], c[0])  # noise-free target does not depend on the seed
    assert not np.array_equal(a[1], c[1])


def test_stack_errors(stack):
    with pytest.raises(ValueError, match="3-D .*single 2-D plane"):
        simulate_from_stack(stack[0], VOXEL)
    with pytest.raises(ValueError, match="voxel_size_um is required"):
        simulate_from_stack(stack, None)
    with pytest.raises(ValueError, match="three positive"):
        simulate_from_stack(stack, (0.25, 0.1))
    with pytest.raises(ValueError, match="at least 9 planes"):
        simulate_from_stack(stack[:6], VOXEL)
    bad = stack.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        simulate_from_stack(bad, VOXEL)
    with pytest.raises(ValueError, match="empty"):
        simulate_from_stack(np.zeros_like(stack), VOXEL)
