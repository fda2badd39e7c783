"""Block access: axis views over arrays and raw arrays in files, against numpy indexing."""

import numpy as np
import pytest

from hazematching.blocks import AxesView, MappedArray, RawArray, normalize_key

KEYS = [(...,), (1,), (slice(1, 3),), (0, slice(None), slice(2, 5)), (2, 1, 3, 4),
        (slice(None), 0, slice(1, 2), slice(3, 7)), (-1, ..., slice(0, 1))]


def test_keys_are_normalised_like_numpy_basic_indexing():
    assert normalize_key((..., 2), (3, 4, 5)) == (slice(0, 3, 1), slice(0, 4, 1), 2)
    assert normalize_key(-1, (3, 4)) == (2, slice(0, 4, 1))
    with pytest.raises(IndexError, match="out of range"):
        normalize_key(3, (3,))
    with pytest.raises(IndexError, match="step 1"):
        normalize_key(slice(None, None, 2), (3,))


@pytest.mark.parametrize("key", KEYS)
def test_axes_view_reads_as_the_transposed_array(key):
    # a TZCYX array with a singleton T, seen as NCYX (its Z as N)
    a = np.random.default_rng(0).normal(size=(1, 3, 2, 4, 7)).astype(np.float32)
    view = AxesView(a, "NCYX", "NCYX", fixed={0: 0})
    np.testing.assert_array_equal(view[key], a[0][key])
    # CZYX stored (NGFF order) seen as ZCYX; a YX array seen with new N and C dimensions
    czyx = np.moveaxis(a[0], 1, 0)
    np.testing.assert_array_equal(AxesView(czyx, "CNYX", "NCYX")[key], a[0][key])
    plane = a[0, 0, 0]
    try:
        expected = plane[None, None][key]
    except IndexError:  # out of range for the new length-1 dimensions: refused alike
        with pytest.raises(IndexError):
            AxesView(plane, "YX", "NCYX")[key]
    else:
        np.testing.assert_array_equal(AxesView(plane, "YX", "NCYX")[key], expected)


def test_axes_view_selects_channels_and_writes_through():
    a = np.random.default_rng(1).normal(size=(3, 4, 5, 6))  # N C Y X
    sel = AxesView(a, "NCYX", "NCYX", select={"C": [3, 1]})
    assert sel.shape == (3, 2, 5, 6)
    np.testing.assert_array_equal(sel[1:3, :, 2:4], a[1:3][:, [3, 1], 2:4])
    np.testing.assert_array_equal(sel[0, 1], a[0, 1])
    with pytest.raises(TypeError, match="cannot be written"):
        sel[0] = 0
    out = np.zeros((5, 2, 6, 7))  # stored (S, N, Y, X), written as (N, S, Y, X)
    view = AxesView(out, "KNYX", "NKYX")
    block = np.arange(5 * 3 * 7, dtype=float).reshape(5, 3, 7)
    view[1, :, 2:5] = block
    np.testing.assert_array_equal(out[:, 1, 2:5], block)
    assert not out[:, 0].any() and not out[:, 1, :2].any()
    plane = np.zeros((6, 7))
    AxesView(plane, "YX", "NYX")[0, 1:3] = 1.0
    assert plane.sum() == 14


def test_mapped_array_applies_its_functions_per_block():
    a = np.arange(12.0).reshape(3, 4)
    out = np.zeros((3, 4))
    m = MappedArray(a, read=lambda b: b * 2)
    np.testing.assert_array_equal(m[1:], a[1:] * 2)
    w = MappedArray(out, write=lambda b: b + 1)
    w[0] = a[0]
    np.testing.assert_array_equal(out[0], a[0] + 1)


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<u2"])
@pytest.mark.parametrize("key", KEYS)
def test_raw_array_reads_and_writes_blocks_of_a_file(tmp_path, dtype, key):
    a = (np.random.default_rng(2).uniform(0, 1000, (3, 2, 4, 7))).astype(dtype)
    path = tmp_path / "raw.bin"
    path.write_bytes(b"header!!" + a.tobytes())
    raw = RawArray(path, 8, a.shape, dtype)
    np.testing.assert_array_equal(raw[key], a[key])
    raw.close()
    rw = RawArray(path, 8, a.shape, dtype, writable=True)
    rw[key] = 7
    b = a.copy()
    b[key] = 7
    rw.close()
    assert path.read_bytes() == b"header!!" + b.tobytes()


def test_raw_array_refuses_a_file_shorter_than_its_data(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\0" * 20)
    with pytest.raises(OSError, match="ends before its pixel data"):
        RawArray(path, 0, (4, 4), "<f4")[2:]
