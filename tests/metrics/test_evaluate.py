"""Evaluation orchestration: arrays and folders, unavailable metrics, bad input, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hazematching.io import ImageError, write_tiff
from hazematching.metrics import evaluate as ev
from hazematching.metrics import fidelity as fd

CHEAP = ["psnr", "ri_psnr", "ssim", "ms_ssim", "micro_ssim", "micro_ms3im", "gmsd", "frc",
         "power_ratio", "uncertainty"]


@pytest.fixture
def data(smooth_image):
    rng = np.random.default_rng(0)
    targets = [smooth_image(rng, (192, 192)) for _ in range(2)]
    samples = [(t[None] + rng.normal(0, 40, (4, *t.shape))).astype(np.float32) for t in targets]
    mmse = [s.mean(axis=0) for s in samples]
    inputs = [(0.5 * t + 200).astype(np.float32) for t in targets]
    return targets, mmse, samples, inputs


def test_evaluate_arrays_values_and_structure(data, empty_torch_home):
    targets, mmse, samples, inputs = data
    res = ev.evaluate_arrays(mmse, targets, samples, input=inputs, pixel_size_um=0.1,
                             names=["a", "b"], dataset="toy", method="m",
                             max_perceptual_samples=1)
    assert res["format"] == ev.RESULTS_FORMAT and res["images"] == ["a", "b"]
    assert set(res["variants"]) == {"mmse", "sample", "input"}
    # Weights are absent: LPIPS and FID are unavailable with the reason; all others computed.
    assert set(res["unavailable"]) == {"lpips", "fid"}
    assert "alexnet-owt-7be5be79.pth" in res["unavailable"]["lpips"]
    assert "https://" in res["unavailable"]["fid"]
    mm = res["variants"]["mmse"]
    expected = {"psnr", "ri_psnr", "ssim", "ms_ssim", "micro_ssim", "micro_ms3im", "fsim",
                "gmsd", "frc_frequency", "frc_resolution_um", "power_ratio"}
    assert set(mm["dataset"]) == expected
    assert all(v is not None for v in mm["dataset"].values())
    # Per-image values are the direct metric; dataset values the mean over images.
    for i, (p, t) in enumerate(zip(mmse, targets)):
        assert mm["per_image"]["psnr"][i] == pytest.approx(fd.psnr(p, t))
        assert mm["per_image"]["ssim"][i] == pytest.approx(fd.ssim(p, t))
    assert mm["dataset"]["psnr"] == pytest.approx(np.mean(mm["per_image"]["psnr"]))
    # Sample variant: the average over single samples, each scored alone.
    sm = res["variants"]["sample"]
    direct = np.mean([fd.ri_psnr(s, targets[0]) for s in samples[0]])
    assert sm["per_image"]["ri_psnr"][0] == pytest.approx(direct)
    assert sm["n_samples"]["psnr"] == 4
    assert mm["dataset"]["psnr"] > sm["dataset"]["psnr"]  # averaging removes noise
    # FRC resolution in µm = pixel size / cut-off frequency.
    f = mm["per_image"]["frc_frequency"][0]
    assert mm["per_image"]["frc_resolution_um"][0] == pytest.approx(0.1 / f)
    unc = res["uncertainty"]
    assert unc["std_source"] == "sample std" and unc["ence"] >= 0
    json.dumps(ev._json_clean(res), allow_nan=False)  # JSON-ready


def test_perceptual_samples_limit(data, empty_torch_home):
    targets, mmse, samples, _ = data
    res = ev.evaluate_arrays(mmse, targets, samples, metrics=["fsim", "gmsd"],
                             max_perceptual_samples=2)
    assert res["variants"]["sample"]["n_samples"] == {"fsim": 2, "gmsd": 4}


def test_lpips_and_fid_with_standin_weights(data, standin_weights, fast_inception):
    targets, _, _, _ = data
    blurred = [fd_blur(t) for t in targets]
    same = ev.evaluate_arrays(targets, targets, metrics=["lpips", "fid"],
                              weights_dir=standin_weights)
    worse = ev.evaluate_arrays(blurred, targets, metrics=["lpips", "fid"],
                               weights_dir=standin_weights)
    assert same["unavailable"] == {}
    assert same["variants"]["mmse"]["dataset"]["lpips"] == 0.0
    assert worse["variants"]["mmse"]["dataset"]["lpips"] > 0.0
    assert abs(same["variants"]["mmse"]["dataset"]["fid"]) < \
        1e-3 * worse["variants"]["mmse"]["dataset"]["fid"]
    assert "evaluation targets" in same["settings"]["fid_reference"]


def fd_blur(img: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, 2.0)


def test_small_images_mark_size_limited_metrics_unavailable(smooth_image, standin_weights):
    rng = np.random.default_rng(1)
    t = smooth_image(rng, (48, 96))
    res = ev.evaluate_arrays([t + 5], [t], metrics=["ssim", "ms_ssim", "micro_ms3im", "lpips",
                                                    "fid"], weights_dir=standin_weights)
    assert set(res["unavailable"]) == {"ms_ssim", "micro_ms3im", "lpips", "fid"}
    assert "176" in res["unavailable"]["ms_ssim"] and "64" in res["unavailable"]["lpips"]
    assert res["variants"]["mmse"]["dataset"]["ssim"] is not None


@pytest.mark.parametrize("case, match", [
    ("shape", "b: MMSE prediction shape"),
    ("nan", "b: MMSE prediction: contains 1 NaN"),
    ("constant", "b: target is constant"),
    ("samples", "b: samples must be"),
    ("metric", "unknown metric"),
])
def test_bad_input_names_the_image(data, case, match):
    targets, mmse, samples, _ = data
    targets, mmse, samples = list(targets), list(mmse), list(samples)
    metrics = ev.METRICS
    if case == "shape":
        mmse[1] = mmse[1][:-1]
    elif case == "nan":
        mmse[1] = mmse[1].copy()
        mmse[1][3, 3] = np.nan
    elif case == "constant":
        targets[1] = np.full_like(targets[1], 7.0)
    elif case == "samples":
        samples[1] = samples[1][0]
    else:
        metrics = ["psnr", "sharpness"]
    with pytest.raises(ValueError, match=match):
        ev.evaluate_arrays(mmse, targets, samples, names=["a", "b"], metrics=metrics)


def test_json_roundtrip_turns_non_finite_into_null(tmp_path, data):
    targets, _, _, _ = data
    res = ev.evaluate_arrays(targets, targets, metrics=["psnr"])  # perfect → PSNR = inf
    assert res["variants"]["mmse"]["dataset"]["psnr"] is None
    path = ev.save_results(res, tmp_path / "r.json")
    assert ev.load_results(path)["variants"] == res["variants"]
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="bad.json: not a hazematching"):
        ev.load_results(tmp_path / "bad.json")


def _write_folders(tmp_path, data, paper=True):
    targets, mmse, samples, inputs = data
    tdir, pdir = tmp_path / "targets", tmp_path / "preds"
    for i, (t, m, s, x) in enumerate(zip(targets, mmse, samples, inputs)):
        if paper:
            write_tiff(tdir / f"img{i}.tif", np.stack([t, x]), "CYX")
        else:
            write_tiff(tdir / f"img{i}.tif", t, "YX")
        write_tiff(pdir / f"img{i}_mmse.tif", m, "YX")
        write_tiff(pdir / f"img{i}_samples.tif", s, "SYX")
        write_tiff(pdir / f"img{i}_std.tif", s.std(axis=0), "YX")
    return pdir, tdir


def test_evaluate_folders_paper_layout(tmp_path, data, empty_torch_home):
    pdir, tdir = _write_folders(tmp_path, data)
    out = tmp_path / "report"
    res = ev.evaluate_folders(pdir, tdir, out_dir=out, metrics=CHEAP)
    assert res["dataset"] == "targets" and res["method"] == "preds"
    assert set(res["variants"]) == {"mmse", "sample", "input"}
    assert res["uncertainty"]["std_source"] == "std maps"
    saved = ev.load_results(out / ev.RESULTS_FILE)
    assert saved["variants"]["mmse"]["dataset"] == pytest.approx(
        res["variants"]["mmse"]["dataset"])
    gallery = ev.load_gallery(out / saved["gallery"])
    assert set(gallery) == {"target", "mmse", "samples", "std", "input"}
    assert gallery["samples"].shape == (3, 192, 192)
    direct = ev.evaluate_arrays(data[1], data[0], data[2], metrics=["psnr"])
    assert res["variants"]["mmse"]["dataset"]["psnr"] == pytest.approx(
        direct["variants"]["mmse"]["dataset"]["psnr"], rel=1e-6)


def test_evaluate_folders_file_errors(tmp_path, data):
    pdir, tdir = _write_folders(tmp_path, data, paper=False)
    (pdir / "img1_std.tif").unlink()
    with pytest.raises(ImageError, match="img1_std.tif"):
        ev.evaluate_folders(pdir, tdir, metrics=["psnr"])
    (pdir / "img1_mmse.tif").unlink()
    with pytest.raises(ImageError, match="img1_mmse.tif"):
        ev.evaluate_folders(pdir, tdir, metrics=["psnr"])
    write_tiff(pdir / "img1_mmse.tif", data[1][1], "YX")
    write_tiff(pdir / "stray_mmse.tif", data[1][1], "YX")
    with pytest.raises(ImageError, match="stray_mmse.tif have no target"):
        ev.evaluate_folders(pdir, tdir, metrics=["psnr"])
    (pdir / "stray_mmse.tif").unlink()
    for extra in [*pdir.glob("*_std.tif"), *pdir.glob("*_samples.tif")]:
        extra.unlink()
    write_tiff(tdir / "img2.tif", np.zeros((3, 8, 8), np.float32), "ZYX")
    write_tiff(pdir / "img2_mmse.tif", np.zeros((8, 8), np.float32), "YX")
    with pytest.raises(ImageError, match="img2.tif: expected a 2-D"):
        ev.evaluate_folders(pdir, tdir, metrics=["psnr"])
