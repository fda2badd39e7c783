"""Blocks of images that need not fit in memory: axis views and raw arrays in files.

Prediction reads its input and writes its outputs a band of rows at a time
(:mod:`hazematching.predict`). These classes give numpy arrays, zarr arrays and the pixel data
of uncompressed TIFF files one interface for that: ``array[key]`` and ``array[key] = block``
with integers, slices (step 1) and ``...``, as numpy's basic indexing.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Key = tuple[int | slice, ...]


def normalize_key(key: Any, shape: Sequence[int]) -> Key:
    """A basic-indexing key as one int (non-negative, in range) or slice(start, stop, 1) per
    dimension of `shape`; ``...`` and missing trailing entries become full slices."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    if len(key) > len(shape):
        raise IndexError(f"{len(key)} indices for an array of {len(shape)} dimensions")
    key = key + (slice(None),) * (len(shape) - len(key))
    out: list[int | slice] = []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                raise IndexError(f"only slices of step 1 are supported, got {k}")
            out.append(slice(start, max(start, stop), 1))
        else:
            i = int(k) + (n if int(k) < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {k} out of range for a dimension of length {n}")
            out.append(i)
    return tuple(out)


def _length(k: int | slice) -> int | None:
    return None if isinstance(k, int) else k.stop - k.start


class AxesView:
    """`array` (dimensions named by `axes`) seen with the dimensions `view`, read and written
    a block at a time.

    A letter of `view` that `axes` lacks is a new dimension of length 1; every letter of
    `axes` must be in `view`. `fixed` holds dimensions of `array` taken at one index (e.g. the
    singleton T of a TZCYX file) and not named by `axes`; `select` picks indices along a
    dimension of the view (e.g. channels ``{"C": [1]}``, reading only).

    Example: an (H, W) array with ``axes="YX"`` and ``view="NCYX"`` looks (1, 1, H, W).
    """

    def __init__(self, array: Any, axes: str, view: str, *, fixed: Mapping[int, int] | None = None,
                 select: Mapping[str, Sequence[int]] | None = None):
        self.array, self.axes, self.view = array, axes, view
        self.fixed = dict(fixed or {})
        self.select = {k: np.asarray(v, dtype=np.intp) for k, v in (select or {}).items()}
        if len(axes) + len(self.fixed) != len(array.shape):
            raise ValueError(f"axes {axes!r} and {len(self.fixed)} fixed dimension(s) do not "
                             f"describe an array of shape {tuple(array.shape)}")
        if set(axes) - set(view) or len(set(view)) != len(view):
            raise ValueError(f"view {view!r} must name each of {axes!r} once")
        self._src = [d for d in range(len(array.shape)) if d not in self.fixed]

    @property
    def shape(self) -> tuple[int, ...]:
        out = []
        for a in self.view:
            if a in self.select:
                out.append(len(self.select[a]))
            else:
                out.append(self.array.shape[self._src[self.axes.index(a)]] if a in self.axes
                           else 1)
        return tuple(out)

    @property
    def ndim(self) -> int:
        return len(self.view)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """The chunk shape of `array` in view order (1 for new dimensions), if it has one."""
        chunks = getattr(self.array, "chunks", None)
        if chunks is None:
            return None
        return tuple(chunks[self._src[self.axes.index(a)]] if a in self.axes else 1
                     for a in self.view)

    def _source_key(self, key: Key) -> tuple[list[int | slice], dict[str, np.ndarray]]:
        src: list[int | slice] = [0] * len(self.array.shape)
        for d, i in self.fixed.items():
            src[d] = i
        post: dict[str, np.ndarray] = {}
        for a, k in zip(self.view, key, strict=True):
            if a not in self.axes:
                continue
            if a in self.select:
                chosen = self.select[a][k]
                if isinstance(k, int):
                    k = int(chosen)
                elif chosen.size:
                    lo = int(chosen.min())
                    post[a] = chosen - lo
                    k = slice(lo, int(chosen.max()) + 1, 1)
                else:
                    k = slice(0, 0, 1)
            src[self._src[self.axes.index(a)]] = k
        return src, post

    def __getitem__(self, key: Any) -> np.ndarray:
        key = normalize_key(key, self.shape)
        src, post = self._source_key(key)
        block = np.asarray(self.array[tuple(src)])
        have = [self.axes[self._src.index(d)] for d in self._src if not isinstance(src[d], int)]
        for a, idx in post.items():
            block = np.take(block, idx, axis=have.index(a))
        keep = [a for a, k in zip(self.view, key, strict=True) if not isinstance(k, int)]
        block = block.transpose([have.index(a) for a in keep if a in have])
        for pos, a in enumerate(keep):
            if a not in have:
                k = key[self.view.index(a)]
                block = np.expand_dims(block, pos)[(slice(None),) * pos + (k,)]
        return block

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.select:
            raise TypeError("a view that selects indices cannot be written")
        key = normalize_key(key, self.shape)
        src, _ = self._source_key(key)
        keep = [a for a, k in zip(self.view, key, strict=True) if not isinstance(k, int)]
        value = np.broadcast_to(np.asarray(value), [_length(key[self.view.index(a)])
                                                    for a in keep])
        drop = tuple(0 if a not in self.axes else slice(None) for a in keep)
        value = value[drop]
        have = [a for a in keep if a in self.axes]
        order = [self.axes[self._src.index(d)] for d in self._src
                 if not isinstance(src[d], int)]
        self.array[tuple(src)] = value.transpose([have.index(a) for a in order])


class MappedArray:
    """`array` with a function applied to every block read (`read`) or written (`write`), e.g.
    normalisation of the input and its inverse for the outputs. Elementwise functions give the
    same values block by block as on the whole array."""

    def __init__(self, array: Any, *, read: Callable[[np.ndarray], np.ndarray] | None = None,
                 write: Callable[[np.ndarray], np.ndarray] | None = None):
        self.array, self._read, self._write = array, read, write

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def chunks(self) -> tuple[int, ...] | None:
        return getattr(self.array, "chunks", None)

    def __getitem__(self, key: Any) -> np.ndarray:
        block = np.asarray(self.array[key])
        return block if self._read is None else self._read(block)

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        self.array[key] = value if self._write is None else self._write(value)


class RawArray:
    """A C-order array of `dtype` stored uncompressed at byte `offset` of a file (e.g. the pixel
    data of a contiguous TIFF), read and written by blocks with ``pread``/``pwrite``.

    Not memory-mapped: the pages it reads or writes go through the page cache and never count
    towards the process's resident memory, so streaming through a large file keeps that small.
    """

    def __init__(self, path: str | Path, offset: int, shape: Sequence[int], dtype: Any, *,
                 writable: bool = False):
        self.path, self.offset = Path(path), int(offset)
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def _runs(self, key: Key) -> tuple[list[int], list[tuple[int, int, tuple]]]:
        """Block shape and the contiguous runs of `key`: (first element, count, block index)."""
        shape = self.shape
        last = len(shape) - 1
        while last >= 0 and isinstance(key[last], slice) and key[last] == slice(0, shape[last], 1):
            last -= 1
        tail = math.prod(shape[last + 1:])
        block_shape = [_length(k) for k in key if not isinstance(k, int)]
        if last < 0:
            return block_shape, [(0, math.prod(shape), ())]
        ranges = [[k] if isinstance(k, int) else range(k.start, k.stop) for k in key[:last]]
        k_last = key[last]
        start, count = (k_last, 1) if isinstance(k_last, int) else (k_last.start,
                                                                    k_last.stop - k_last.start)
        strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
        runs = []
        for combo in itertools.product(*ranges):
            first = sum(i * s for i, s in zip(combo, strides, strict=False)) + start * strides[last]
            where = tuple(i - k.start for i, k in zip(combo, key[:last], strict=True)
                          if isinstance(k, slice))
            runs.append((first, count * tail, where))
        return block_shape, runs

    def __getitem__(self, key: Any) -> np.ndarray:
        key = normalize_key(key, self.shape)
        block_shape, runs = self._runs(key)
        out = np.empty(block_shape, self.dtype.newbyteorder("="))
        for first, count, where in runs:
            nbytes = count * self.dtype.itemsize
            data = os.pread(self._fd, nbytes, self.offset + first * self.dtype.itemsize)
            if len(data) != nbytes:
                raise OSError(f"{self.path}: the file ends before its pixel data")
            out[where] = np.frombuffer(data, self.dtype).reshape(out.shape[len(where):])
        return out

    def __setitem__(self, key: Any, value: Any) -> None:
        key = normalize_key(key, self.shape)
        block_shape, runs = self._runs(key)
        value = np.ascontiguousarray(np.broadcast_to(np.asarray(value), block_shape),
                                     self.dtype)
        for first, _, where in runs:
            data = value[where].tobytes()
            written = os.pwrite(self._fd, data, self.offset + first * self.dtype.itemsize)
            if written != len(data):
                raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes); is "
                              f"the disk full?")
