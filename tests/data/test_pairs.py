import numpy as np
import pytest
from helpers import make_pairs, write_paper_layout

from hazematching.data.pairs import detect_layout, load_pairs, resolve_split_dirs
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
