"""Prediction of a folder killed with SIGKILL, a second predictor on the same folder, and the
rows of the fault matrix that concern prediction: RGB input, one sample, dot files, modes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tifffile
from helpers import make_pairs
from reliability.processes import CliProcess
from typer.testing import CliRunner

from hazematching.cli import app
from hazematching.io import read_image, write_tiff

runner = CliRunner()


def _images(folder, n=3, size=64):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_tiff(folder / f"img{i}.tif", make_pairs(1, size=size, seed=i).inputs[0][0, 0]
                   .astype(np.uint16), "YX")
    return folder


def _complete(out):
    """Every output under its final name reads as a whole 64×64 image."""
    names = sorted(p.name for p in out.glob("*.tif"))
    for name in names:
        image, _ = read_image(out / name)
        assert image.shape[-2:] == (64, 64), name
    return names


def test_kill_during_folder_prediction_and_a_second_predictor(tmp_path, untrained_model):
    inputs = _images(tmp_path / "in")
    out = tmp_path / "out"
    args = ["predict", str(untrained_model), str(inputs), "--out", str(out), "--n-samples", "8",
            "--n-time-points", "12", "--save-samples", "--device", "cpu"]
    run = CliProcess(args, tmp_path / "run.log")
    run.wait_for(lambda: any(out.glob(".img0_samples.tif.*.partial")))  # under the lock
    run.pause()
    loser = runner.invoke(app, args)
    assert loser.exit_code == 2 and "is in use by another hazematching process" in loser.output
    run.resume()
    # Killed while the second image's samples are being written.
    run.wait_for(lambda: (out / "img0_mmse.tif").exists()
                 and any(out.glob(".img1_samples.tif.*.partial")))
    run.kill()
    assert run.exitcode == -9
    assert _complete(out) == ["img0_mmse.tif", "img0_samples.tif", "img0_std.tif"]

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "img0.tif: skipped, its outputs exist" in again.output
    assert len(_complete(out)) == 9
    assert not list(out.glob(".*.partial"))  # the killed run's temporary file is gone


def test_rgb_needs_a_channel(tmp_path, untrained_model):
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8),
                     photometric="rgb")
    r = runner.invoke(app, ["predict", str(untrained_model), str(rgb), "--out",
                            str(tmp_path / "o"), "--n-samples", "2"])
    assert r.exit_code == 2
    assert "rgb.tif: has 3 channel(s) (axes CYX, shape (3, 64, 64)" in r.output
    assert "--channel" in r.output and not (tmp_path / "o" / "rgb_mmse.tif").exists()
    r = runner.invoke(app, ["predict", str(untrained_model), str(rgb), "--out",
                            str(tmp_path / "o"), "--n-samples", "2", "--channel", "1"])
    assert r.exit_code == 0, r.output
    assert tifffile.imread(tmp_path / "o" / "rgb_mmse.tif").shape == (64, 64)


def test_one_sample_writes_no_std_and_cannot_calibrate(tmp_path, untrained_model):
    inputs = _images(tmp_path / "in", n=1)
    r = runner.invoke(app, ["predict", str(untrained_model), str(inputs), "--out",
                            str(tmp_path / "o"), "--n-samples", "1"])
    assert r.exit_code == 0, r.output
    assert "(1 sample: no std)" in r.output and "_std.tif" not in r.output
    assert sorted(p.name for p in (tmp_path / "o").glob("*.tif")) == ["img0_mmse.tif"]
    pairs = tmp_path / "pairs"
    from helpers import write_paper_layout

    write_paper_layout(pairs, make_pairs(2))
    r = runner.invoke(app, ["calibrate", str(untrained_model), str(pairs), "--n-samples", "1"])
    assert r.exit_code == 2 and "at least 2 posterior samples" in r.output


@pytest.mark.parametrize("value", ["0", "-2"])
def test_sample_counts_below_one_are_refused(tmp_path, untrained_model, value):
    inputs = _images(tmp_path / "in", n=1)
    for command in (["predict", str(untrained_model), str(inputs), "--out", str(tmp_path / "o")],
                    ["calibrate", str(untrained_model), str(inputs)]):
        r = runner.invoke(app, [*command, "--n-samples", value])
        assert r.exit_code == 2 and f"--n-samples) must be at least 1, got {value}" in r.output
    assert not (tmp_path / "o").exists()  # refused before any work


def test_dot_files_are_not_images(tmp_path, untrained_model):
    inputs = _images(tmp_path / "in", n=1)
    (inputs / "._img0.tif").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    r = runner.invoke(app, ["predict", str(untrained_model), str(inputs), "--out",
                            str(tmp_path / "o"), "--n-samples", "2"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").glob("*.tif")) == [
        "img0_mmse.tif", "img0_std.tif"]


def test_results_follow_the_umask(tmp_path, untrained_model):
    previous = os.umask(0o022)
    try:
        inputs = _images(tmp_path / "in", n=1)
        r = runner.invoke(app, ["predict", str(untrained_model), str(inputs), "--out",
                                str(tmp_path / "o"), "--n-samples", "2"])
        assert r.exit_code == 0, r.output
    finally:
        os.umask(previous)
    for f in (tmp_path / "o").glob("*.tif"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_killed_ome_zarr_prediction_of_a_folder_resumes(tmp_path, untrained_model):
    inputs = _images(tmp_path / "in", n=2)
    out = tmp_path / "out"
    args = ["predict", str(untrained_model), str(inputs), "--out", str(out), "--n-samples", "8",
            "--n-time-points", "12", "--format", "zarr", "--device", "cpu"]
    run = CliProcess(args, tmp_path / "run.log")
    # Killed while the second image's outputs are being written, chunk by chunk.
    run.wait_for(lambda: (out / "img0_mmse.ome.zarr").exists()
                 and any(out.glob(".img1_mmse.ome.zarr.*.partial/0/*")))
    run.kill()
    assert run.exitcode == -9
    assert sorted(p.name for p in out.glob("*.zarr")) == ["img0_mmse.ome.zarr",
                                                          "img0_std.ome.zarr"]
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "img0.tif: skipped, its outputs exist" in again.output
    for name in ("img0", "img1"):
        for kind in ("mmse", "std"):
            image, axes = read_image(out / f"{name}_{kind}.ome.zarr")
            assert axes == "YX" and image.shape == (64, 64)
    assert not list(out.glob(".*.partial"))  # the killed run's temporary folders are gone
