import errno
import os
import stat

import numpy as np
import pytest
import tifffile

from hazematching.io import (
    LOCK_FILE,
    ImageError,
    WriteError,
    atomic_path,
    check_axes,
    folder_lock,
    from_planes,
    image_files,
    list_images,
    read_image,
    remove_stale_partials,
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


def test_rgb_samples_become_channels(tmp_path):
    rgb = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    image, axes = read_image(tmp_path / "rgb.tif")
    assert axes == "CYX" and image.shape == (3, 6, 5)
    np.testing.assert_array_equal(image[2], rgb[..., 2])
    tifffile.imwrite(tmp_path / "rgbz.tif", np.stack([rgb, rgb]), photometric="rgb")
    assert read_image(tmp_path / "rgbz.tif")[0].shape == (2, 3, 6, 5)
    with pytest.raises(ImageError, match=r"axes 'YX' name 2 dimensions but the image has 3 "
                                         r"\(shape \(3, 6, 5\), stored as CYX\)"):
        read_image(tmp_path / "rgb.tif", "YX")


def test_unsupported_dtype_lists_the_supported_ones(tmp_path):
    tifffile.imwrite(tmp_path / "i8.tif", np.zeros((4, 4), np.int8))
    with pytest.raises(ImageError, match="unsupported pixel type int8; expected one of uint8, "
                                         "uint16, int16, int32, uint32, float16, float32, "
                                         "float64"):
        read_image(tmp_path / "i8.tif")


def test_header_declaring_more_pixels_than_the_file_can_hold(tmp_path):
    path = write_tiff(tmp_path / "small.tif", np.zeros((8, 8), np.uint16), "YX")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(60000)
        tif.pages[0].tags["ImageLength"].overwrite(60000)
    with pytest.raises(ImageError, match="small.tif: the header declares 6866 MiB of pixels"):
        read_image(path)
    # A compressed strip said to be 2 GB long (the fuzz test found tifffile allocating that).
    tifffile.imwrite(tmp_path / "strip.tif", np.zeros((32, 32), np.uint8), compression="zlib")
    with tifffile.TiffFile(tmp_path / "strip.tif", mode="r+b") as tif:
        tif.pages[0].tags["StripByteCounts"].overwrite(0x7FFF0000)
    with pytest.raises(ImageError, match=r"strip.tif: image data at bytes \d+–\d+ lie past the "
                                         r"end of the \d+-byte file"):
        read_image(tmp_path / "strip.tif")


def test_written_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        p = write_tiff(tmp_path / "a.tif", np.zeros((4, 4), np.uint16), "YX")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(p.stat().st_mode) == 0o640


def test_failed_write_names_the_file_and_keeps_the_previous_one(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("previous")
    message = (r"out.txt: writing failed \(No space left on device\); the previous file is "
               r"unchanged")
    with pytest.raises(WriteError, match=message), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_text() == "previous" and sorted(tmp_path.iterdir()) == [target]


def test_stale_partials_of_the_given_files_only_are_removed(tmp_path):
    mine = tmp_path / ".a_mmse.tif.1234abcd.partial"
    other = tmp_path / ".b_mmse.tif.1234abcd.partial"
    for f in (mine, other):
        f.write_bytes(b"half")
    assert remove_stale_partials([tmp_path / "a_mmse.tif"]) == [mine]
    assert not mine.exists() and other.exists()


def test_dot_files_and_folders_are_not_images(tmp_path):
    for name in ("b.tif", "a.TIFF", "._b.tif", ".hidden.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.tif").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.TIFF", "b.tif"]
    assert image_files(tmp_path / "dir.tif") == []


def test_folder_lock_is_reentrant_within_a_process(tmp_path):
    with folder_lock(tmp_path, "a test"), folder_lock(tmp_path, "a test"):
        assert (tmp_path / LOCK_FILE).exists()
    with folder_lock(tmp_path, "a test"):  # released: can be taken again
        pass


def test_staged_folders_follow_the_umask(tmp_path):
    import os
    import stat

    from hazematching.data.synthetic import simulate_pairs, write_pairs
    from hazematching.io import staging_dir

    old = os.umask(0o022)
    try:
        folder = staging_dir(tmp_path, ".x.", ".partial")
        assert folder.name.startswith(".x.") and folder.name.endswith(".partial")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        target, widefield = simulate_pairs(2, 32, seed=0)
        write_pairs(tmp_path / "ds", target, widefield, split_fractions=(1.0, 0.0, 0.0))
        assert stat.S_IMODE((tmp_path / "ds").stat().st_mode) == 0o755
    finally:
        os.umask(old)


def test_ranks_of_one_run_share_the_lock_that_refuses_other_runs(tmp_path):
    import subprocess
    import sys

    from hazematching.io import FolderInUseError, held_by_run

    holder = subprocess.Popen(  # rank 0 of a distributed run, holding the folder's lock
        [sys.executable, "-c", "import sys\nfrom hazematching.io import folder_lock\n"
         "with folder_lock(sys.argv[1], 'rank 0'):\n    print('held', flush=True)\n"
         "    sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FolderInUseError, match="is in use by another hazematching"):
            with folder_lock(tmp_path, "another run"):
                pass
        with held_by_run(tmp_path):  # a rank > 0 of the same run
            with folder_lock(tmp_path, "rank 1"):
                (tmp_path / "written").touch()
        with pytest.raises(FolderInUseError):  # only for that block
            with folder_lock(tmp_path, "another run"):
                pass
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
