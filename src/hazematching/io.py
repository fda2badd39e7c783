"""Image files in and out: TIFF with CSBDeep-style axes strings, written atomically.

Axes strings name each array dimension, e.g. ``"YX"`` (one plane), ``"ZYX"``/``"TYX"``/``"SYX"``
(a stack processed plane by plane) and ``"CYX"`` (several conditioning channels).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from hazematching.config import AXES_ALLOWED

TIFF_SUFFIXES = (".tif", ".tiff")
_SUPPORTED_DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.float16, np.float32,
                     np.float64)


class ImageError(ValueError):
    """A file could not be used as an image; the message names the file and the problem."""


def check_axes(axes: str, ndim: int, source: str = "image") -> str:
    """Validate an axes string against an array's number of dimensions.

    Args:
        axes: e.g. ``"YX"``, ``"ZYX"``; case-insensitive.
        ndim: number of array dimensions it must describe.
        source: name used in the error message (a file path).

    Returns:
        The upper-case axes string.
    """
    ax = axes.upper()
    if ax not in AXES_ALLOWED:
        raise ImageError(f"{source}: axes {axes!r} are not supported; expected one of "
                         f"{', '.join(AXES_ALLOWED)}")
    if len(ax) != ndim:
        raise ImageError(f"{source}: axes {axes!r} name {len(ax)} dimensions but the image has "
                         f"{ndim}; give an axes string with one letter per dimension")
    return ax


def guess_axes(array: np.ndarray, source: str = "image") -> str:
    """Guess axes for an array without metadata: 2-D → YX, 3-D → ZYX (planes processed alone)."""
    if array.ndim == 2:
        return "YX"
    if array.ndim == 3:
        return "ZYX"
    raise ImageError(f"{source}: cannot guess the axes of a {array.ndim}-D image of shape "
                     f"{array.shape}; pass axes explicitly (e.g. 'ZCYX')")


def read_image(path: str | Path, axes: str | None = None) -> tuple[np.ndarray, str]:
    """Read a TIFF file and validate its axes and pixel values.

    Args:
        path: a ``.tif``/``.tiff`` file.
        axes: the axes of the stored array; None takes them from the file's metadata (ImageJ or
            shaped) with singleton dimensions dropped, or guesses from the number of dimensions.

    Returns:
        ``(array, axes)``: the array in its stored dtype, and its upper-case axes string.

    Raises:
        ImageError: missing, unreadable, truncated or non-finite file, or axes that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise ImageError(f"{path}: unsupported file type {path.suffix!r}; expected a TIFF "
                         f"({', '.join(TIFF_SUFFIXES)})")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = series.asarray()
            file_axes = series.axes
    except Exception as err:  # tifffile raises many types for corrupt/truncated files
        raise ImageError(f"{path}: cannot read TIFF ({type(err).__name__}: {err}); the file is "
                         f"corrupt or truncated") from None
    if array.size == 0:
        raise ImageError(f"{path}: the image is empty (shape {array.shape})")
    if array.dtype.type not in _SUPPORTED_DTYPES:
        raise ImageError(f"{path}: unsupported pixel type {array.dtype}; expected uint8, uint16 "
                         f"or float32")
    if axes is None:
        # Drop singleton dimensions, which tifffile reports for ImageJ hyperstacks.
        keep = [i for i, n in enumerate(array.shape) if n > 1 or file_axes[i] in "YX"]
        array = array.reshape([array.shape[i] for i in keep])
        named = "".join(file_axes[i] for i in keep).replace("Q", "").replace("I", "Z")
        named = named.replace("S", "C") if named.endswith("YXS") else named
        axes = named if named in AXES_ALLOWED and len(named) == array.ndim else guess_axes(
            array, str(path))
    axes = check_axes(axes, array.ndim, str(path))
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        n_bad = int((~np.isfinite(array)).sum())
        raise ImageError(f"{path}: contains {n_bad} NaN/Inf pixel(s); clean or mask the image "
                         f"before using it")
    return array, axes


def to_planes(array: np.ndarray, axes: str) -> np.ndarray:
    """Rearrange an image to ``(N, C, Y, X)``: N = planes (Z/T/S, or 1), C = channels (or 1)."""
    axes = check_axes(axes, array.ndim)
    order = [axes.index(a) for a in axes if a in "ZTS"] + [axes.index(a) for a in axes if a == "C"]
    order += [axes.index("Y"), axes.index("X")]
    out = np.transpose(array, order)
    if "C" not in axes:
        out = out[..., None, :, :] if out.ndim == 3 else out[None]
    if not any(a in axes for a in "ZTS"):
        out = out[None]
    return out


def from_planes(planes: np.ndarray, axes: str) -> np.ndarray:
    """Inverse of :func:`to_planes` for a single-channel result: ``(N, Y, X)`` → axes without C."""
    out_axes = axes.replace("C", "")
    if planes.ndim != 3:
        raise ValueError(f"expected (N, Y, X) planes, got shape {planes.shape}")
    return planes if out_axes != "YX" else planes[0]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    An interrupted write thus never leaves a file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _imagej_axes(axes: str) -> str:
    # ImageJ hyperstacks know T, Z, C, Y, X only; a sample axis S is stored as T.
    return axes.replace("S", "T")


def write_tiff(path: str | Path, array: np.ndarray, axes: str, *,
               pixel_size_um: float | None = None) -> Path:
    """Write an ImageJ-compatible TIFF atomically (temporary name, then rename).

    Args:
        path: destination ``.tif`` file.
        array: image whose dimensions `axes` names; written as float32 unless integer.
        axes: e.g. ``"YX"``, ``"ZYX"``; ``S`` is stored as ImageJ's ``T``.
        pixel_size_um: optional lateral pixel size written as the resolution.
    """
    path = Path(path)
    axes = check_axes(axes, array.ndim, str(path))
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    kwargs: dict = {"imagej": True, "metadata": {"axes": _imagej_axes(axes)}}
    if pixel_size_um:
        kwargs["resolution"] = (1.0 / pixel_size_um, 1.0 / pixel_size_um)
        kwargs["metadata"]["unit"] = "um"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, **kwargs)
    return path


def list_images(folder: str | Path) -> list[Path]:
    """Sorted TIFF files in `folder` (not recursive); an error if the folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ImageError(f"{folder}: contains no TIFF files ({', '.join(TIFF_SUFFIXES)})")
    return files
