"""Tests for hazematching.data.splits: deterministic splits and patch export in the paper layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hazematching.data.pairs import load_pairs, resolve_split_dirs
from hazematching.data.splits import assign_splits, split_dataset
from hazematching.io import read_image, write_tiff


def write_sources(folder: Path, n: int, shape: tuple[int, ...] = (40, 50)) -> Path:
    """`n` paper-layout uint16 files (channel 0 target, channel 1 input) with distinct values."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    axes = "CYX" if len(shape) == 2 else "ZCYX"
    for i in range(n):
        size = (2, *shape) if len(shape) == 2 else (shape[0], 2, *shape[1:])
        write_tiff(folder / f"img{i:02d}.tif", rng.integers(0, 60000, size, dtype=np.uint16),
                   axes)
    return folder


def test_split_writes_paper_layout(tmp_path: Path) -> None:
    src = write_sources(tmp_path / "src", 10)
    out = tmp_path / "dataset"
    summary = split_dataset(src, out, val_fraction=0.2, test_fraction=0.2, patch_size=16)
    assert {k: len(v) for k, v in summary.images.items()} == {"train": 6, "val": 2, "test": 2}
    all_names = sum(summary.images.values(), [])
    assert sorted(all_names) == [f"img{i:02d}" for i in range(10)]  # each image exactly once
    assert summary.patches == {"train_crop": 6 * 2 * 3, "val_crop": 2 * 2 * 3}
    assert sorted(p.name for p in out.iterdir()) == ["split.json", "test", "train", "train_crop",
                                                     "val", "val_crop"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "src"]  # no staging left

    name = summary.images["train"][0]
    source, _ = read_image(src / f"{name}.tif", "CYX")
    whole, axes = read_image(out / "train" / f"{name}.tif")
    assert axes == "CYX"
    np.testing.assert_array_equal(whole, source.astype(np.float32))
    patch, _ = read_image(out / "train_crop" / f"{name}_y00016_x00032.tif")
    np.testing.assert_array_equal(patch, source[:, 16:32, 32:48].astype(np.float32))

    # The training code finds and reads the result.
    train_dir, val_dir = resolve_split_dirs(out)
    assert (train_dir, val_dir) == (out / "train_crop", out / "val_crop")
    assert len(load_pairs(train_dir)) == 36
    manifest = json.loads((out / "split.json").read_text())
    assert manifest["images"] == summary.images and manifest["seed"] == 0


def test_split_is_deterministic(tmp_path: Path) -> None:
    a = assign_splits(20, 0.1, 0.2, seed=3)
    assert a == assign_splits(20, 0.1, 0.2, seed=3)
    assert a != assign_splits(20, 0.1, 0.2, seed=4)
    assert [len(a[k]) for k in ("train", "val", "test")] == [14, 2, 4]
    small = assign_splits(3, 0.01, 0.0)  # a non-zero share gets at least one image
    assert (len(small["train"]), len(small["val"]), small["test"]) == (2, 1, [])
    with pytest.raises(ValueError, match="at least 1 training image"):
        assign_splits(2, 0.1, 0.1)
    with pytest.raises(ValueError, match="val_fraction"):
        assign_splits(10, 1.0, 0.0)


def test_stacks_and_input_target_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rng = np.random.default_rng(1)
    for i in range(3):
        for sub in ("input", "target"):
            (src / sub).mkdir(parents=True, exist_ok=True)
            write_tiff(src / sub / f"s{i}.tif", rng.random((2, 20, 20), dtype=np.float32), "ZYX")
    summary = split_dataset(src, tmp_path / "out", val_fraction=0.3, test_fraction=0.3,
                            patch_size=10)
    name = summary.images["train"][0]
    stack, axes = read_image(tmp_path / "out" / "train" / f"{name}.tif")
    assert axes == "ZCYX" and stack.shape == (2, 2, 20, 20)
    target, _ = read_image(src / "target" / f"{name}.tif", "ZYX")
    np.testing.assert_array_equal(stack[:, 0], target)
    assert (tmp_path / "out" / "train_crop" / f"{name}_z001_y00010_x00010.tif").is_file()
    assert summary.patches["train_crop"] == 2 * 4


def test_refuses_existing_output_and_small_images(tmp_path: Path) -> None:
    src = write_sources(tmp_path / "src", 4, shape=(12, 40))
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="nothing is overwritten"):
        split_dataset(src, tmp_path / "exists")
    with pytest.raises(ValueError, match="smaller than patch_size 16.*img00 \\(12×40\\)"):
        split_dataset(src, tmp_path / "out", patch_size=16)
    assert not (tmp_path / "out").exists()
