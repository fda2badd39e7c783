import numpy as np
import pytest
import tifffile

from hazematching.io import (
    ImageError,
    atomic_path,
    check_axes,
    from_planes,
    list_images,
    read_image,
    to_planes,
    write_tiff,
)


@pytest.mark.parametrize("axes,shape", [("YX", (5, 6)), ("ZYX", (3, 5, 6)), ("TYX", (2, 5, 6)),
                                        ("CYX", (2, 5, 6)), ("ZCYX", (3, 2, 5, 6))])
def test_roundtrip_keeps_axes(tmp_path, axes, shape):
    a = np.random.default_rng(0).random(shape).astype(np.float32)
    p = write_tiff(tmp_path / "a.tif", a, axes)
    b, ax = read_image(p)
    assert ax == axes and b.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_sample_axis_is_stored_as_imagej_time(tmp_path):
    a = np.zeros((4, 5, 6), np.uint16)
    p = write_tiff(tmp_path / "s.tif", a, "SYX")
    with tifffile.TiffFile(p) as t:
        assert t.is_imagej
    assert read_image(p)[1] == "TYX"
    assert read_image(p, "SYX")[1] == "SYX"


def test_planes_roundtrip():
    a = np.arange(3 * 2 * 4 * 5).reshape(3, 2, 4, 5)
    assert to_planes(a, "ZCYX").shape == (3, 2, 4, 5)
    assert to_planes(a[0], "CYX").shape == (1, 2, 4, 5)
    assert to_planes(a[:, 0], "ZYX").shape == (3, 1, 4, 5)
    assert to_planes(a[0, 0], "YX").shape == (1, 1, 4, 5)
    np.testing.assert_array_equal(from_planes(to_planes(a[0, 0], "YX")[:, 0], "YX"), a[0, 0])


def test_errors_name_file_and_problem(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageError, match="bad.tif.*corrupt or truncated"):
        read_image(bad)
    good = write_tiff(tmp_path / "good.tif", np.ones((64, 64), np.uint16), "YX")
    trunc = tmp_path / "trunc.tif"
    trunc.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageError, match="trunc.tif"):
        read_image(trunc)
    nan = np.ones((4, 4), np.float32)
    nan[1, 1] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    with pytest.raises(ImageError, match="nan.tif: contains 1 NaN"):
        read_image(tmp_path / "nan.tif")
    with pytest.raises(ImageError, match="axes 'ZYX' name 3 dimensions but the image has 2"):
        read_image(good, "ZYX")
    with pytest.raises(ImageError, match="not supported"):
        check_axes("QYX", 3)
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ImageError, match="unsupported file type"):
        read_image(tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="contains no TIFF"):
        list_images(tmp_path / "empty")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
