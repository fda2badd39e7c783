"""`hazematching simulate …` commands, run through typer's CliRunner on real files."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from hazematching.cli import app
from hazematching.data.synthetic import SyntheticConfig, render_volume
from hazematching.io import list_images, read_image, write_tiff

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["simulate", *(str(a) for a in args)])


def load_split(folder, split):
    return [read_image(p)[0] for p in list_images(folder / split)]


def test_synthetic_writes_paper_layout_and_parameters(tmp_path):
    out = tmp_path / "syn"
    result = invoke("synthetic", "--out", out, "--n", 5, "--size", 32, "--depth", 8,
                    "--seed", 3, "--photons", 50, "--split", "0.6,0.2,0.2")
    assert result.exit_code == 0, result.output
    assert "Wrote 5 pairs" in result.output
    counts = {s: len(list_images(out / s)) for s in ("train", "val", "test")}
    assert counts == {"train": 3, "val": 1, "test": 1}
    pair = load_split(out, "train")[0]
    assert pair.shape == (2, 32, 32) and pair.dtype == np.float32
    meta = yaml.safe_load((out / "simulation.yaml").read_text())
    assert meta["generator"] == "synthetic" and meta["n"] == 5 and meta["seed"] == 3
    assert meta["splits"] == counts
    cfg = SyntheticConfig.model_validate(meta["config"])
    assert (cfg.size, cfg.depth, cfg.photons) == (32, 8, 50)


def test_synthetic_is_deterministic_and_config_file_is_merged(tmp_path):
    args = ("synthetic", "--n", 3, "--size", 32, "--depth", 6, "--split", "1,0,0")
    assert invoke(*args, "--out", tmp_path / "a").exit_code == 0
    assert invoke(*args, "--out", tmp_path / "b").exit_code == 0
    for x, y in zip(load_split(tmp_path / "a", "train"), load_split(tmp_path / "b", "train")):
        np.testing.assert_array_equal(x, y)
    # A previous run's simulation.yaml is a valid --config; command-line options win.
    result = invoke("synthetic", "--out", tmp_path / "c", "--n", 3, "--split", "1,0,0",
                    "--config", tmp_path / "a" / "simulation.yaml", "--photons", 20)
    assert result.exit_code == 0, result.output
    meta = yaml.safe_load((tmp_path / "c" / "simulation.yaml").read_text())["config"]
    assert (meta["size"], meta["depth"], meta["photons"]) == (32, 6, 20)


def test_existing_output_and_bad_options_fail_cleanly(tmp_path):
    out = tmp_path / "syn"
    out.mkdir()
    result = invoke("synthetic", "--out", out, "--n", 2)
    assert result.exit_code == 2 and "already exists" in result.output
    result = invoke("synthetic", "--out", tmp_path / "x", "--n", 4, "--split", "0.5,0.5")
    assert result.exit_code == 2 and "--split must be 3" in result.output
    result = invoke("synthetic", "--out", tmp_path / "x", "--n", 4, "--structure", "cells")
    assert result.exit_code == 2 and "structure" in result.output
    assert not (tmp_path / "x").exists()
    result = invoke("synthetic", "--out", out, "--n", 3, "--size", 32, "--depth", 6,
                    "--overwrite")
    assert result.exit_code == 0, result.output


@pytest.fixture
def stack_file(tmp_path):
    cfg = SyntheticConfig(size=32, depth=12, dz_um=0.25, filament_density=300, blob_density=300)
    path = tmp_path / "stack.tif"
    write_tiff(path, render_volume(np.random.default_rng(0), cfg) * 100, "ZYX")
    return path


def test_stack_command(tmp_path, stack_file):
    out = tmp_path / "from_stack"
    result = invoke("stack", stack_file, "--out", out, "--voxel-size", "0.25,0.1,0.1",
                    "--target", "confocal", "--split", "0.5,0.25,0.25")
    assert result.exit_code == 0, result.output
    meta = yaml.safe_load((out / "simulation.yaml").read_text())
    assert meta["focal_planes"] == [4, 5, 6, 7]  # 1 µm = 4 planes kept free at each end
    assert meta["voxel_size_um"] == [0.25, 0.1, 0.1] and meta["config"]["target"] == "confocal"
    assert sum(len(list_images(out / s)) for s in ("train", "val", "test")) == 4
    assert load_split(out, "train")[0].shape == (2, 32, 32)


def test_stack_command_errors(tmp_path, stack_file):
    result = invoke("stack", stack_file, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--voxel-size is required" in result.output
    result = invoke("stack", stack_file, "--out", tmp_path / "o", "--voxel-size", "0.25,0.1")
    assert result.exit_code == 2 and "3 comma-separated" in result.output
    result = invoke("stack", stack_file, "--out", tmp_path / "o", "--voxel-size", "0.1,0.1,0.1")
    assert result.exit_code == 2 and "at least 21 planes" in result.output
    flat = tmp_path / "plane.tif"
    write_tiff(flat, np.ones((32, 32), np.float32), "YX")
    result = invoke("stack", flat, "--out", tmp_path / "o", "--voxel-size", "0.25,0.1,0.1")
    assert result.exit_code == 2 and "z-stack (ZYX)" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # microsim import and PSFs: ~4 s
def test_microsim_command(tmp_path):
    pytest.importorskip("microsim")
    out = tmp_path / "ms"
    result = invoke("microsim", "--out", out, "--n", 2, "--size", 32, "--depth", 8,
                    "--split", "0.5,0.5,0")
    assert result.exit_code == 0, result.output
    meta = yaml.safe_load((out / "simulation.yaml").read_text())
    assert meta["generator"] == "microsim" and meta["config"]["depth"] == 8
    pair = load_split(out, "val")[0]
    assert pair.shape == (2, 32, 32) and pair[1].mean() > pair[1].min()


@pytest.mark.slow  # microsim import and PSFs for two image sizes: ~8 s
def test_real_command_writes_layout_with_region_splits(tmp_path):
    pytest.importorskip("microsim")
    from hazematching.data.real_structure import REGION_CODE, load_structure, region_map

    out = tmp_path / "real"
    result = invoke("real", "--out", out, "--n", 5, "--size", 32, "--eval-size", 40,
                    "--depth", 8, "--margin", 2, "--seed", 5)
    assert result.exit_code == 0, result.output
    counts = {s: len(list_images(out / s)) for s in ("train", "val", "test")}
    assert counts == {"train": 3, "val": 1, "test": 1}
    assert load_split(out, "train")[0].shape == (2, 32, 32)
    test_pair = load_split(out, "test")[0]
    assert test_pair.shape == (2, 40, 40) and test_pair[1].mean() > test_pair[1].min()
    meta = yaml.safe_load((out / "simulation.yaml").read_text())
    assert meta["generator"] == "real" and meta["splits"] == counts
    assert set(meta["sources"]) == {"nuclei", "membranes"}
    assert meta["sources"]["nuclei"]["licence"] == "CC0 1.0"
    # Every crop lies inside its own split's region of its source image.
    crops = meta["crops"]
    assert [c["split"] for c in crops] == ["train"] * 3 + ["val", "test"]
    assert [c["source"] for c in crops[:3]] == ["nuclei", "membranes", "nuclei"]
    for crop in crops:
        regions = region_map(load_structure(crop["source"]).shape[1:],
                             meta["split_fractions"])
        y0, x0, h, w = crop["window_yxhw"]
        assert (regions[y0:y0 + h, x0:x0 + w] == REGION_CODE[crop["split"]]).all()


def test_real_command_rejects_crops_larger_than_a_region(tmp_path):
    result = invoke("real", "--out", tmp_path / "r", "--n", 4, "--eval-size", 500)
    assert result.exit_code == 2
    assert "crop fits in the val region" in result.output and "--eval-size" in result.output
    assert not (tmp_path / "r").exists()
