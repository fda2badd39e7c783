"""OME-Zarr in and out: metadata against ome-zarr-py's own reader and writer, bad stores."""

import json

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.scale import Scaler
from ome_zarr.writer import write_image

from hazematching.io import ImageError, open_image, read_image
from hazematching.ngff import create_ome_zarr


def _ome_zarr_py(path, image, axes, scales):
    """An OME-Zarr written by ome-zarr-py (independent of our writer), a 3-level pyramid."""
    root = zarr.group(store=parse_url(str(path), mode="w").store)
    transforms = [[{"type": "scale", "scale": [s if a in "zyx" else 1.0 for a in axes]}]
                  for s in scales]
    write_image(image, root, scaler=Scaler(max_layer=len(scales) - 1), axes=[
        {"name": a, "type": {"c": "channel", "t": "time"}.get(a, "space"),
         **({"unit": "micrometer"} if a in "zyx" else {})} for a in axes],
        coordinate_transformations=transforms)
    return path


def test_multiscale_input_is_read_at_full_resolution_with_axes_and_pixel_sizes(tmp_path):
    czyx = np.random.default_rng(0).uniform(0, 100, (2, 3, 64, 48)).astype(np.float32)
    path = _ome_zarr_py(tmp_path / "in.ome.zarr", czyx, "czyx", [0.25, 0.5, 1.0])
    with open_image(path) as image:
        assert image.axes == "ZCYX" and image.shape == (3, 2, 64, 48)  # NGFF CZYX → ours
        assert image.pixel_sizes == pytest.approx({"Z": 0.25, "Y": 0.25, "X": 0.25})
        assert image.origin == "file"
        np.testing.assert_array_equal(image[1, :, 10:20], czyx[:, 1, 10:20])
    tczyx = czyx[None, :1]  # singleton t and c are dropped
    path = _ome_zarr_py(tmp_path / "five.ome.zarr", tczyx, "tczyx", [1.0, 2.0])
    array, axes = read_image(path)
    assert axes == "ZYX"
    np.testing.assert_array_equal(array, czyx[0])


def test_written_images_are_read_by_ome_zarr_py_with_their_metadata(tmp_path):
    path = tmp_path / "out.ome.zarr"
    path.mkdir()
    array = create_ome_zarr(path, (3, 2, 300, 70), "KZYX", {"Z": 1.5, "Y": 0.1, "X": 0.1},
                            name="img_samples")
    array[:] = np.arange(3 * 2 * 300 * 70, dtype=np.float32).reshape(3, 2, 300, 70)
    assert array.chunks == (1, 1, 256, 70)
    assert json.loads((path / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    node = next(iter(Reader(parse_url(str(path)))()))
    assert [a["name"] for a in node.metadata["axes"]] == ["sample", "z", "y", "x"]
    assert node.metadata["coordinateTransformations"][0] == [
        {"type": "scale", "scale": [1.0, 1.5, 0.1, 0.1]}]
    np.testing.assert_array_equal(np.asarray(node.data[0]), array[:])
    assert node.metadata["name"] == "img_samples"


@pytest.mark.parametrize("case,match", [
    ("empty", "is neither a zarr array nor a zarr group"),
    ("group", "zarr group without OME-NGFF 'multiscales' metadata"),
    ("axes-count", "the metadata name 2 axes \\(y, x\\) but the full-resolution array '0' has "
                   "3 dimensions"),
    ("no-axes", "OME-NGFF 0.4 metadata without 'axes'"),
    ("bad-scale", "invalid OME-NGFF 0.4 metadata: 'scale' list"),
    ("no-dataset", "the full-resolution dataset 'missing' named by the metadata is not a zarr "
                   "array"),
    ("v3", "is a Zarr v3 store"),
    ("file", "is a file, not a zarr folder"),
])
def test_bad_stores_name_the_path_and_what_was_expected(tmp_path, case, match):
    path = tmp_path / "bad.ome.zarr"
    if case == "file":
        path.write_bytes(b"not a folder")
    else:
        path.mkdir()
    if case in ("group", "axes-count", "no-axes", "bad-scale", "no-dataset"):
        group = zarr.open_group(str(path), mode="a")
        group.zeros("0", shape=(2, 8, 8), dtype="f4")
        ms = {"version": "0.4", "axes": [{"name": n, "type": "space"} for n in "zyx"],
              "datasets": [{"path": "0", "coordinateTransformations": [
                  {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}
        if case == "axes-count":
            ms["axes"] = ms["axes"][1:]
        elif case == "no-axes":
            del ms["axes"]
        elif case == "bad-scale":
            ms["datasets"][0]["coordinateTransformations"][0]["scale"] = [1.0, 1.0]
        elif case == "no-dataset":
            ms["datasets"][0]["path"] = "missing"
        if case != "group":
            group.attrs["multiscales"] = [ms]
    if case == "v3":
        (path / "zarr.json").write_text("{}")
    with pytest.raises(ImageError, match=match) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_a_plain_zarr_array_and_a_bioformats2raw_container_are_images(tmp_path):
    z = zarr.open(str(tmp_path / "plain.zarr"), mode="w", shape=(2, 16, 16), dtype="u2")
    z[:] = np.arange(512, dtype=np.uint16).reshape(2, 16, 16)
    with open_image(tmp_path / "plain.zarr") as image:
        assert (image.axes, image.origin, image.pixel_sizes) == ("ZYX", "guessed", {})
        np.testing.assert_array_equal(image.read(), z[:])
    root = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w")
    root.attrs["bioformats2raw.layout"] = 3
    (tmp_path / "b2r.zarr" / "0").mkdir()
    create_ome_zarr(tmp_path / "b2r.zarr" / "0", (16, 16), "YX", {"Y": 0.2, "X": 0.2})[:] = 1.0
    array, axes = read_image(tmp_path / "b2r.zarr")
    assert axes == "YX" and array.shape == (16, 16) and (array == 1).all()


def test_nan_pixels_are_refused_when_the_block_holding_them_is_read(tmp_path):
    path = tmp_path / "nan.ome.zarr"
    path.mkdir()
    a = create_ome_zarr(path, (40, 40), "YX")
    a[30, 5] = np.nan
    with open_image(path) as image:
        assert np.isfinite(image[:20]).all()
        with pytest.raises(ImageError, match="nan.ome.zarr: contains 1 NaN/Inf pixel"):
            image[20:]
