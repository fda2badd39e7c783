"""Image files in and out: TIFF with CSBDeep-style axes strings, written atomically.

Axes strings name each array dimension, e.g. ``"YX"`` (one plane), ``"ZYX"``/``"TYX"``/``"SYX"``
(a stack processed plane by plane) and ``"CYX"`` (several conditioning channels).

Every file is written under a hidden temporary name (``.NAME.XXXXXXXX.partial``) in the target
folder and renamed onto its final name only when complete, so a name that exists is a complete
file. Temporary files are created with the user's umask (as ``open`` would), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import errno
import glob as globlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from hazematching.config import AXES_ALLOWED

TIFF_SUFFIXES = (".tif", ".tiff")
_SUPPORTED_DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.float16, np.float32,
                     np.float64)
#: A TIFF may declare at most this many times its own size in pixel data (compressed files) and
#: at least this much is always allowed: a corrupt header cannot make the reader allocate more.
_MAX_EXPANSION, _MIN_ALLOWED_BYTES = 1000, 64 * 2**20
_PARTIAL_SUFFIX = ".partial"
LOCK_FILE = ".hazematching.lock"


class ImageError(ValueError):
    """A file could not be used as an image; the message names the file and the problem."""


class WriteError(OSError):
    """Writing a file failed (disk full, file too large, no permission); the message names it
    and says that the previous file, if any, is unchanged."""


class FolderInUseError(OSError):
    """Another process holds the folder's lock file (see :func:`folder_lock`)."""


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


def _read_series(path: Path) -> tuple[np.ndarray, str]:
    """The first series of a TIFF and tifffile's axes for it (``S`` = samples per pixel)."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            size = tif.filehandle.size
            if series.nbytes > max(_MAX_EXPANSION * size, _MIN_ALLOWED_BYTES):
                raise ImageError(f"{path}: the header declares {series.nbytes / 2**20:.0f} MiB "
                                 f"of pixels {tuple(series.shape)} in a {size / 2**20:.1f} MiB "
                                 f"file; the file is corrupt or truncated")
            # A strip or tile said to run past the end would make tifffile allocate its length.
            for page in series.pages:
                for offset, count in zip(getattr(page, "dataoffsets", ()),
                                         getattr(page, "databytecounts", ()), strict=False):
                    if offset + count > size:
                        raise ImageError(f"{path}: image data at bytes {offset}–"
                                         f"{offset + count} lie past the end of the {size}-byte "
                                         f"file; the file is truncated or corrupt")
            return series.asarray(), series.axes
    except ImageError:
        raise
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for corrupt files
        raise ImageError(f"{path}: cannot read TIFF ({type(err).__name__}: {err}); the file is "
                         f"corrupt or truncated") from None


def _samples_to_channels(array: np.ndarray, file_axes: str, path: Path) -> tuple[np.ndarray, str]:
    """Move tifffile's samples-per-pixel axis (RGB: ``YXS``) to a channel axis before Y."""
    if "S" not in file_axes:
        return array, file_axes
    s = file_axes.index("S")
    if array.shape[s] == 1:
        return np.take(array, 0, axis=s), file_axes.replace("S", "")
    if "C" in file_axes and array.shape[file_axes.index("C")] > 1:
        raise ImageError(f"{path}: has both channels and {array.shape[s]} samples per pixel "
                         f"(axes {file_axes}, shape {array.shape}); save one channel per plane")
    rest = file_axes.replace("S", "").replace("C", "")
    if "C" in file_axes:  # a singleton C: drop it, the samples become the channels
        array = np.take(array, 0, axis=file_axes.index("C"))
        s = file_axes.replace("C", "").index("S")
    y = rest.index("Y")
    return np.moveaxis(array, s, y), rest[:y] + "C" + rest[y:]


def read_image(path: str | Path, axes: str | None = None) -> tuple[np.ndarray, str]:
    """Read a TIFF file and validate its axes and pixel values.

    Samples per pixel (RGB/RGBA files, which tifffile reports as a trailing ``S`` axis) become a
    channel axis ``C`` before Y, e.g. a (64, 64, 3) RGB file is returned as (3, 64, 64) ``CYX``;
    the caller then picks the channel(s) it needs.

    Args:
        path: a ``.tif``/``.tiff`` file.
        axes: the axes of the array as returned (after the move of RGB samples to C); None takes
            them from the file's metadata (ImageJ or shaped) with singleton dimensions dropped,
            or guesses from the number of dimensions.

    Returns:
        ``(array, axes)``: the array in its stored dtype, and its upper-case axes string.

    Raises:
        ImageError: missing, unreadable, truncated or non-finite file, a header declaring far
            more pixel data than the file holds, or axes that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise ImageError(f"{path}: unsupported file type {path.suffix!r}; expected a TIFF "
                         f"({', '.join(TIFF_SUFFIXES)})")
    array, file_axes = _read_series(path)
    if array.size == 0:
        raise ImageError(f"{path}: the image is empty (shape {array.shape})")
    if array.dtype.type not in _SUPPORTED_DTYPES:
        names = ", ".join(np.dtype(t).name for t in _SUPPORTED_DTYPES)
        raise ImageError(f"{path}: unsupported pixel type {array.dtype}; expected one of {names}")
    array, file_axes = _samples_to_channels(array, file_axes, path)
    if axes is None:
        # Drop singleton dimensions, which tifffile reports for ImageJ hyperstacks.
        keep = [i for i, n in enumerate(array.shape) if n > 1 or file_axes[i] in "YX"]
        array = array.reshape([array.shape[i] for i in keep])
        named = "".join(file_axes[i] for i in keep).replace("I", "Z")
        if not any(a in named for a in "ZTS"):  # tifffile's Q: an unnamed stack axis
            named = named.replace("Q", "Z", 1)
        named = named.replace("Q", "")
        axes = named if named in AXES_ALLOWED and len(named) == array.ndim else guess_axes(
            array, str(path))
    elif len(axes) != array.ndim:
        raise ImageError(f"{path}: axes {axes!r} name {len(axes)} dimensions but the image has "
                         f"{array.ndim} (shape {array.shape}, stored as {file_axes}); give one "
                         f"letter per dimension")
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


def _create_partial(path: Path) -> Path:
    """Create an empty, hidden temporary file next to `path`, mode 0666 minus the umask."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_PARTIAL_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def staging_dir(parent: str | Path, prefix: str, suffix: str) -> Path:
    """Create a new hidden folder ``parent/<prefix><random><suffix>``, mode 0777 minus the
    umask (``tempfile.mkdtemp`` makes it 0700, so a dataset renamed from it would be private).
    """
    parent = Path(parent)
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            folder.mkdir(mode=0o777)
            return folder
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    An interrupted write thus never leaves a file under the final name, and a failed one (disk
    full, file too large) leaves the previous file unchanged; the latter raises
    :class:`WriteError` naming `path`. A process killed inside the block leaves its temporary
    file behind: :func:`remove_stale_partials` removes it.
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _create_partial(path)
    except OSError as err:
        raise WriteError(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as err:
        if isinstance(err, WriteError):
            raise
        kept = "the previous file is unchanged" if existed else "nothing was written"
        # A short write (numpy's tofile) carries no errno: on a local disk it means it is full.
        reason = err.strerror or f"{err}: is the disk full?"
        raise WriteError(f"{path}: writing failed ({reason}); {kept}") from None
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_stale_partials(paths: Iterable[Path]) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` left for `paths` in a killed run.

    Only call this while holding the folder's lock (:func:`folder_lock`): a live writer's
    temporary file looks the same. Returns the files removed.
    """
    removed = []
    for path in paths:
        pattern = f".{globlib.escape(path.name)}.*{_PARTIAL_SUFFIX}"
        for stale in path.parent.glob(pattern):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


def reserve_space(path: Path) -> None:
    """Allocate the blocks of a (sparse, e.g. memory-mapped) file now, so that a full disk fails
    here with :class:`WriteError` rather than as SIGBUS when a mapped page is written."""
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                return  # the file system cannot preallocate: nothing to gain
            raise


@contextlib.contextmanager
def folder_lock(folder: str | Path, purpose: str) -> Iterator[None]:
    """Hold ``folder/.hazematching.lock`` exclusively for the block (re-entrant in a process).

    Two processes writing the same model directory or output folder would corrupt each other's
    results; the second one fails at once instead. The lock is an OS file lock, released when
    the process ends however it ends, so a killed run never leaves the folder locked.

    Args:
        folder: the folder to lock (created if missing).
        purpose: what the holder does, for the error message (e.g. "training").

    Raises:
        FolderInUseError: another process holds the lock.
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"{folder}: cannot create the folder ({err.strerror or err})") from None
    lock = FileLock(folder / LOCK_FILE, timeout=0, is_singleton=True, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise FolderInUseError(f"{folder} is in use by another hazematching process "
                               f"({folder / LOCK_FILE} is locked); wait for it to finish, or "
                               f"choose another folder for {purpose}") from None
    except OSError as err:
        raise WriteError(f"{folder / LOCK_FILE}: cannot create the lock file "
                         f"({err.strerror or err})") from None
    try:
        yield
    finally:
        lock.release()


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


def is_image_file(path: Path) -> bool:
    """A visible TIFF file: dot files (macOS ``._name.tif`` resource forks, this package's
    ``.partial`` files) are never images, whoever lists the folder."""
    return path.suffix.lower() in TIFF_SUFFIXES and not path.name.startswith(".") \
        and path.is_file()


def image_files(folder: str | Path) -> list[Path]:
    """Sorted image files (:func:`is_image_file`) in `folder`, not recursive; may be empty."""
    return sorted(p for p in Path(folder).iterdir() if is_image_file(p))


def list_images(folder: str | Path) -> list[Path]:
    """Sorted TIFF files in `folder` (not recursive); an error if the folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: no such folder")
    files = image_files(folder)
    if not files:
        raise ImageError(f"{folder}: contains no TIFF files ({', '.join(TIFF_SUFFIXES)})")
    return files
