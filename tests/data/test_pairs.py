import numpy as np
import pytest
from helpers import make_pairs, write_paper_layout

from hazematching.data.pairs import PairedImages, detect_layout, load_pairs, resolve_split_dirs
from hazematching.io import ImageError, write_tiff


def test_paper_layout(tmp_path):
    p = make_pairs(3)
    write_paper_layout(tmp_path, p)
    got = load_pairs(tmp_path)
    assert got.names == p.names
    assert got.targets[0].shape == (1, 48, 48) and got.inputs[0].shape == (1, 1, 48, 48)
    np.testing.assert_allclose(got.targets[1], np.round(p.targets[1]), atol=1)


def test_input_target_layout_with_stacks(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_tiff(tmp_path / "input" / f"{name}.tif", rng.random((3, 20, 24)).astype(np.float32),
                   "ZYX")
        write_tiff(tmp_path / "target" / f"{name}.tif", rng.random((3, 20, 24)).astype(np.float32),
                   "ZYX")
    assert detect_layout(tmp_path) == "input_target"
    got = load_pairs(tmp_path)
    assert got.n_planes == 6 and got.inputs[0].shape == (3, 1, 20, 24)


def test_mismatch_and_missing_partner(tmp_path):
    write_tiff(tmp_path / "input" / "a.tif", np.zeros((20, 24), np.uint16), "YX")
    write_tiff(tmp_path / "target" / "a.tif", np.zeros((20, 25), np.uint16), "YX")
    with pytest.raises(ImageError, match="a.tif.*do not match"):
        load_pairs(tmp_path)
    write_tiff(tmp_path / "input" / "b.tif", np.zeros((20, 24), np.uint16), "YX")
    with pytest.raises(ImageError, match="no target for input file.*b.tif"):
        load_pairs(tmp_path)


def test_paper_layout_needs_two_channels(tmp_path):
    write_tiff(tmp_path / "x.tif", np.zeros((20, 24), np.uint16), "YX")
    with pytest.raises(ImageError, match="x.tif"):
        load_pairs(tmp_path, layout="paper")


def test_split_dirs_and_split(tmp_path):
    (tmp_path / "train_crop").mkdir()
    (tmp_path / "val_crop").mkdir()
    assert resolve_split_dirs(tmp_path) == (tmp_path / "train_crop", tmp_path / "val_crop")
    tr, va = make_pairs(10).split(0.2, seed=0)
    assert len(tr) == 8 and len(va) == 2 and not set(tr.names) & set(va.names)
    assert make_pairs(10).split(0.2, seed=0)[1].names == va.names
    with pytest.raises(ImageError, match="at least 2 images"):
        make_pairs(1).split(0.5)


def test_crops_stay_within_budget_and_spread_over_images():
    pairs = make_pairs(3, size=48)
    stack = PairedImages(["stack"], [np.stack([pairs.targets[0][0]] * 2)],
                         [np.stack([pairs.inputs[0][0]] * 2)])
    both = PairedImages(pairs.names + stack.names, pairs.targets + stack.targets,
                        pairs.inputs + stack.inputs)
    assert both.crops(10 ** 6, 16) is both  # everything fits: the pairs whole

    c = both.crops(6 * 16 * 16, 16, seed=3)
    # round-robin: every image's plane 0 first, then the stack's plane 1, then image 0 again
    assert [n.split("_")[:2] for n in c.names] == [
        ["img0", "z0"], ["img1", "z0"], ["img2", "z0"], ["stack", "z0"], ["stack", "z1"]]
    assert sum(t.size for t in c.targets) <= 6 * 16 * 16
    for name, t, x in zip(c.names, c.targets, c.inputs, strict=True):
        src = both.names.index(name.split("_")[0])
        z, y, xx = (int(p[1:]) for p in name.split("_")[1:])
        assert t.shape == (1, 16, 16) and x.shape == (1, 1, 16, 16)
        np.testing.assert_array_equal(t[0], both.targets[src][z, y:y + 16, xx:xx + 16])
        np.testing.assert_array_equal(x[0], both.inputs[src][z, :, y:y + 16, xx:xx + 16])
    assert c.names == both.crops(6 * 16 * 16, 16, seed=3).names  # seeded
    # a crop side larger than the image takes the whole plane; one crop at least
    big = both.crops(100, 64)
    assert len(big) == 1 and big.targets[0].shape == (1, 48, 48)


def test_pairs_are_read_from_ome_zarr_as_from_tiff(tmp_path):
    from hazematching.io import read_image
    from hazematching.ngff import create_ome_zarr

    tiffs = write_paper_layout(tmp_path / "tif", make_pairs(3, seed=4))
    for layout in ("paper", "input_target"):
        root = tmp_path / layout
        for f in sorted(tiffs.iterdir()):
            cyx, _ = read_image(f)
            items = {"": ("CYX", cyx)} if layout == "paper" else {
                "target": ("YX", cyx[0]), "input": ("YX", cyx[1])}
            for sub, (axes, array) in items.items():
                path = root / sub / f"{f.stem}.ome.zarr"
                path.mkdir(parents=True)
                create_ome_zarr(path, array.shape, axes)[:] = array
        zarr_pairs, tiff_pairs = load_pairs(root), load_pairs(tiffs)
        assert zarr_pairs.names == tiff_pairs.names == ["img0", "img1", "img2"]
        for a, b in zip(zarr_pairs.targets + zarr_pairs.inputs,
                        tiff_pairs.targets + tiff_pairs.inputs, strict=True):
            np.testing.assert_array_equal(a, b)
