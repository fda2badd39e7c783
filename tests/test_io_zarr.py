"""io for large images: TIFF ↔ OME-Zarr with axes and pixel sizes, reading by blocks,
atomic folders."""

import numpy as np
import pytest
import tifffile
from helpers import read_only

from hazematching.io import (
    ImageError,
    WriteError,
    atomic_path,
    create_tiff,
    list_images,
    open_image,
    read_image,
    remove_stale_partials,
    write_tiff,
)
from hazematching.ngff import create_ome_zarr

SIZES = {"Z": 0.5, "Y": 0.065, "X": 0.065}


@pytest.mark.parametrize("axes,shape", [("YX", (40, 30)), ("ZYX", (3, 40, 30)),
                                        ("ZCYX", (3, 2, 40, 30)), ("TYX", (2, 40, 30))])
def test_tiff_to_zarr_to_tiff_keeps_pixels_axes_and_pixel_sizes(tmp_path, axes, shape):
    a = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    sizes = {k: v for k, v in SIZES.items() if k in axes}
    write_tiff(tmp_path / "a.tif", a, axes, pixel_sizes=sizes)
    with open_image(tmp_path / "a.tif") as image:
        assert image.axes == axes and image.origin == "file"
        assert image.pixel_sizes == pytest.approx(sizes, rel=1e-6)
        ngff = axes if "C" not in axes else "CZYX"  # NGFF: channel before space
        order = [axes.index(c) for c in ngff]
        (tmp_path / "a.ome.zarr").mkdir()
        z = create_ome_zarr(tmp_path / "a.ome.zarr", a.transpose(order).shape, ngff,
                            image.pixel_sizes)
        z[:] = image.read().transpose(order)
    with open_image(tmp_path / "a.ome.zarr") as image:
        assert image.axes == axes and image.pixel_sizes == pytest.approx(sizes, rel=1e-6)
        back = image.read()
        np.testing.assert_array_equal(back, a)
        write_tiff(tmp_path / "b.tif", back, image.axes, pixel_sizes=image.pixel_sizes)
    array, ax = read_image(tmp_path / "b.tif")
    np.testing.assert_array_equal(array, a)
    with open_image(tmp_path / "b.tif") as image:
        assert image.pixel_sizes == pytest.approx(sizes, rel=1e-6)
    with tifffile.TiffFile(tmp_path / "b.tif") as tif:  # as ImageJ/Fiji reads them
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.pages.first.resolution == pytest.approx((1 / 0.065, 1 / 0.065), rel=1e-6)


def test_pixel_sizes_of_other_tiff_writers(tmp_path):
    a = np.zeros((2, 16, 16), np.float32)
    tifffile.imwrite(tmp_path / "ome.ome.tif", a, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 120.0, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 120.0, "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.3})
    tifffile.imwrite(tmp_path / "cm.tif", a, resolution=(5e4, 5e4), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "none.tif", a)
    with open_image(tmp_path / "ome.ome.tif") as image:
        assert image.pixel_sizes == pytest.approx({"Z": 0.3, "Y": 0.12, "X": 0.12})
    with open_image(tmp_path / "cm.tif") as image:
        assert image.pixel_sizes == pytest.approx({"Y": 0.2, "X": 0.2})
    with open_image(tmp_path / "none.tif") as image:
        assert image.pixel_sizes == {} and image.origin == "guessed"


@pytest.mark.parametrize("kind", ["contiguous", "compressed-stack", "compressed-plane", "rgb"])
def test_tiffs_read_by_blocks_equal_the_whole_image(tmp_path, kind):
    rng = np.random.default_rng(1)
    path = tmp_path / "a.tif"
    if kind == "rgb":
        tifffile.imwrite(path, rng.integers(0, 255, (30, 20, 3), np.uint8), photometric="rgb")
    elif kind == "compressed-plane":
        tifffile.imwrite(path, rng.normal(size=(30, 20)).astype(np.float32), compression="zlib")
    else:
        tifffile.imwrite(path, rng.normal(size=(3, 2, 30, 20)).astype(">f4"), imagej=True,
                         metadata={"axes": "ZCYX"},
                         compression="zlib" if kind == "compressed-stack" else None)
    whole, axes = read_image(path)
    with open_image(path) as image:
        assert image.axes == axes and image.shape == whole.shape
        for key in [(..., slice(5, 17), slice(None)), (0,), (slice(1, 3),),
                    (..., slice(29, 30), slice(3, 9))]:
            np.testing.assert_array_equal(image[key], whole[key])


def test_a_planes_file_written_block_by_block_reads_back(tmp_path):
    path = tmp_path / "s.tif"
    out = create_tiff(path, (3, 2, 40, 30), "TZYX", pixel_sizes={"Y": 0.1, "X": 0.1})
    expected = np.random.default_rng(2).normal(size=(3, 2, 40, 30)).astype(np.float32)
    for y0 in range(0, 40, 16):
        out[:, :, y0:y0 + 16] = expected[:, :, y0:y0 + 16]
    out.close()
    np.testing.assert_array_equal(tifffile.imread(path), expected)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == "TZYX"


def test_zarr_folders_are_listed_as_images(tmp_path):
    write_tiff(tmp_path / "b.tif", np.zeros((4, 4), np.float32), "YX")
    (tmp_path / "a.ome.zarr").mkdir()
    create_ome_zarr(tmp_path / "a.ome.zarr", (4, 4), "YX")
    (tmp_path / ".c.ome.zarr.1234abcd.partial").mkdir()
    (tmp_path / "notes.zarr.txt").write_text("")
    assert [p.name for p in list_images(tmp_path)] == ["a.ome.zarr", "b.tif"]
    with pytest.raises(ImageError, match="contains no TIFF files .* or OME-Zarr folders"):
        list_images(tmp_path / "a.ome.zarr" / "0")


def test_atomic_folders_replace_the_previous_one_only_when_complete(tmp_path):
    target = tmp_path / "x.ome.zarr"
    with atomic_path(target, directory=True) as tmp:
        assert tmp.is_dir() and tmp.name.startswith(".x.ome.zarr.")
        (tmp / "data").write_text("first")
    assert (target / "data").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_path(target, directory=True) as tmp:
        (tmp / "data").write_text("half")
        raise RuntimeError("interrupted")
    assert (target / "data").read_text() == "first"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "data").write_text("second")
    assert (target / "data").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ome.zarr"]


def test_stale_partial_folders_of_a_killed_run_are_removed(tmp_path):
    stale = tmp_path / ".a_mmse.ome.zarr.1234abcd.partial"
    (stale / "0").mkdir(parents=True)
    old = tmp_path / ".a_mmse.ome.zarr.5678abcd.old"
    old.mkdir()
    other = tmp_path / ".b_mmse.ome.zarr.1234abcd.partial"
    other.mkdir()
    assert sorted(remove_stale_partials([tmp_path / "a_mmse.ome.zarr"])) == sorted([old, stale])
    assert not stale.exists() and not old.exists() and other.exists()


def test_a_read_only_folder_refuses_a_zarr_output_and_keeps_what_it_holds(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "kept.txt").write_text("kept")
    with read_only(folder), pytest.raises(WriteError, match="out/a.ome.zarr: cannot write"):
        with atomic_path(folder / "a.ome.zarr", directory=True):
            pass
    assert sorted(p.name for p in folder.iterdir()) == ["kept.txt"]
