"""Image files in and out: TIFF and OME-Zarr with CSBDeep-style axes strings, written atomically.

Axes strings name each array dimension, e.g. ``"YX"`` (one plane), ``"ZYX"``/``"TYX"``/``"SYX"``
(a stack processed plane by plane) and ``"CYX"`` (several conditioning channels).

:func:`open_image` opens a TIFF or OME-Zarr image to be read by blocks (a band of rows at a
time), so images larger than memory can be streamed through prediction; :func:`read_image`
reads one whole. Pixel sizes (µm per pixel along Z/Y/X) come from the files' metadata and are
written back by :func:`write_tiff`, :func:`create_tiff` and
:func:`hazematching.ngff.create_ome_zarr`.

Every file is written under a hidden temporary name (``.NAME.XXXXXXXX.partial``) in the target
folder and renamed onto its final name only when complete, so a name that exists is a complete
file. Temporary files are created with the user's umask (as ``open`` would), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import errno
import glob as globlib
import math
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile

from hazematching.blocks import AxesView, RawArray, normalize_key
from hazematching.config import AXES_ALLOWED

TIFF_SUFFIXES = (".tif", ".tiff")
#: A folder whose name ends so is read as an OME-Zarr image or zarr array (also ``.ome.zarr``).
ZARR_SUFFIX = ".zarr"
_SUPPORTED_DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.float16, np.float32,
                     np.float64)
#: A TIFF may declare at most this many times its own size in pixel data (compressed files) and
#: at least this much is always allowed: a corrupt header cannot make the reader allocate more.
_MAX_EXPANSION, _MIN_ALLOWED_BYTES = 1000, 64 * 2**20
_PARTIAL_SUFFIX = ".partial"
_OLD_SUFFIX = ".old"
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
    return _guess_axes(tuple(array.shape), source)


def _guess_axes(shape: tuple[int, ...], source: str) -> str:
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        return "ZYX"
    raise ImageError(f"{source}: cannot guess the axes of a {len(shape)}-D image of shape "
                     f"{shape}; pass axes explicitly (e.g. 'ZCYX')")


def is_zarr_path(path: Path) -> bool:
    """A folder named ``*.zarr`` (``*.ome.zarr``): read as OME-Zarr or a zarr array."""
    return path.name.lower().endswith(ZARR_SUFFIX) and path.is_dir()


class _TiffPixels:
    """The first series of a TIFF, read by blocks: uncompressed contiguous data with
    ``pread`` (:class:`~hazematching.blocks.RawArray`), other data page by page, one page
    being the smallest part tifffile decodes (a compressed single plane is read whole)."""

    def __init__(self, path: Path):
        try:
            self.tif = tifffile.TiffFile(path)
        except Exception as err:  # noqa: BLE001 - tifffile raises many types for corrupt files
            raise ImageError(f"{path}: cannot read TIFF ({type(err).__name__}: {err}); the file "
                             f"is corrupt or truncated") from None
        try:
            series = self.tif.series[0]
            self._check_header(path, series)
            self.series, self.shape, self.axes = series, tuple(series.shape), series.axes
            self.dtype = np.dtype(series.dtype).newbyteorder("=")
            offset = series.dataoffset
            self._raw = None if offset is None else RawArray(
                path, offset, self.shape, np.dtype(series.dtype).newbyteorder(self.tif.byteorder))
            page = tuple(series.keyframe.shape)
            lead = self.shape[:len(self.shape) - len(page)]
            self._paged = (self.shape[len(lead):] == page and math.prod(lead) == len(series)
                           and len(series) > 1)
            self._lead = lead
        except ImageError:
            self.tif.close()
            raise
        except Exception as err:  # noqa: BLE001 - as above
            self.tif.close()
            raise ImageError(f"{path}: cannot read TIFF ({type(err).__name__}: {err}); the file "
                             f"is corrupt or truncated") from None
        self._whole: np.ndarray | None = None

    @staticmethod
    def _check_header(path: Path, series: Any) -> None:
        size = series.parent.filehandle.size
        if series.nbytes > max(_MAX_EXPANSION * size, _MIN_ALLOWED_BYTES):
            raise ImageError(f"{path}: the header declares {series.nbytes / 2**20:.0f} MiB "
                             f"of pixels {tuple(series.shape)} in a {size / 2**20:.1f} MiB "
                             f"file; the file is corrupt or truncated")
        # A strip or tile said to run past the end would make tifffile allocate its length.
        for page in series.pages:
            for offset, count in zip(getattr(page, "dataoffsets", ()),
                                     getattr(page, "databytecounts", ()), strict=False):
                if offset + count > size:
                    raise ImageError(f"{path}: image data at bytes {offset}–{offset + count} "
                                     f"lie past the end of the {size}-byte file; the file is "
                                     f"truncated or corrupt")

    def __getitem__(self, key: Any) -> np.ndarray:
        key = normalize_key(key, self.shape)
        if all(isinstance(k, slice) and k == slice(0, n, 1)
               for k, n in zip(key, self.shape, strict=True)):
            return self.series.asarray()
        if self._raw is not None:
            return self._raw[key]
        if self._paged:
            n = len(self._lead)
            lead = [[k] if isinstance(k, int) else range(k.start, k.stop) for k in key[:n]]
            index = np.ravel_multi_index(np.meshgrid(*lead, indexing="ij"), self._lead).ravel()
            pages = self.tif.asarray(key=[int(i) for i in index], series=0)
            pages = pages.reshape(len(index), *self.shape[n:])
            block = pages[(slice(None), *key[n:])]
            return block.reshape([len(r) for r, k in zip(lead, key[:n], strict=True)
                                  if isinstance(k, slice)] + list(block.shape[1:]))
        if self._whole is None:
            self._whole = self.series.asarray()
        return self._whole[key]

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
        self.tif.close()


def _tiff_pixel_sizes(tif: tifffile.TiffFile) -> dict[str, float]:
    """µm per pixel along Z/Y/X from OME-XML, or from the resolution tags with ImageJ's unit
    (or the TIFF resolution unit) and ImageJ's Z spacing; {} where the file says nothing."""
    if tif.is_ome and tif.ome_metadata:
        import xml.etree.ElementTree as ET

        try:
            pixels = next(e for e in ET.fromstring(tif.ome_metadata).iter()
                          if e.tag.endswith("}Pixels") or e.tag == "Pixels")
        except (ET.ParseError, StopIteration):
            return {}
        out = {}
        for a in "ZYX":
            value = pixels.get(f"PhysicalSize{a}")
            factor = _UM_PER_UNIT.get(pixels.get(f"PhysicalSize{a}Unit", "µm").lower())
            if value is not None and factor is not None and float(value) > 0:
                out[a] = float(value) * factor
        return out
    page = tif.pages.first
    ij = tif.imagej_metadata or {}
    unit = str(ij.get("unit", "")).replace("\\u00B5", "µ").lower()
    factor = _UM_PER_UNIT.get(unit) if unit else {
        tifffile.RESUNIT.CENTIMETER: 1e4, tifffile.RESUNIT.INCH: 25400.0,
        tifffile.RESUNIT.MILLIMETER: 1e3, tifffile.RESUNIT.MICROMETER: 1.0,
    }.get(page.resolutionunit)
    if factor is None:
        return {}
    xres, yres = page.resolution
    out = {a: factor / r for a, r in (("X", xres), ("Y", yres)) if r and r > 0}
    spacing = ij.get("spacing")
    if isinstance(spacing, int | float) and spacing > 0:
        out["Z"] = float(spacing) * factor
    return out


#: Micrometres per unit of the length units that ImageJ and OME-XML write.
_UM_PER_UNIT = {"nm": 1e-3, "nanometer": 1e-3, "um": 1.0, "µm": 1.0, "micron": 1.0,
                "microns": 1.0, "micrometer": 1.0, "mm": 1e3, "millimeter": 1e3, "cm": 1e4,
                "centimeter": 1e4, "m": 1e6, "meter": 1e6}

AxesOrigin = Literal["given", "file", "guessed"]


def _plan_axes(shape: tuple[int, ...], file_axes: str, axes: str | None, path: Path,
               samples_are_channels: bool) -> tuple[dict[int, int], dict[int, str], str,
                                                    AxesOrigin]:
    """How to see a stored array with our axes: (dimensions fixed at index 0, letter of every
    other stored dimension, the axes string of the view, where the axes came from).

    A samples-per-pixel axis S (TIFF, `samples_are_channels`) becomes the channel axis, placed
    before Y; a singleton S or C beside it is dropped. Without `axes`, singleton dimensions
    are dropped, tifffile's generic I/Q stack axis is read as Z, and axes that are a reordering
    of a supported string (NGFF's CZYX) are seen in our order (ZCYX).
    """
    names = dict(enumerate(file_axes))
    fixed: dict[int, int] = {}
    dims = list(range(len(shape)))
    returned = dims
    if samples_are_channels and "S" in file_axes:
        s = file_axes.index("S")
        c = file_axes.index("C") if "C" in file_axes else None
        if shape[s] == 1:
            fixed[s] = 0
        elif c is not None and shape[c] > 1:
            raise ImageError(f"{path}: has both channels and {shape[s]} samples per pixel "
                             f"(axes {file_axes}, shape {shape}); save one channel per plane")
        else:
            if c is not None:
                fixed[c] = 0
            names[s] = "C"
        rest = [d for d in dims if d not in fixed and d != s]
        y = next(i for i, d in enumerate(rest) if names[d] == "Y")
        returned = rest[:y] + ([s] if s not in fixed else []) + rest[y:]
    returned = [d for d in returned if d not in fixed]
    if axes is not None:
        if len(axes) != len(returned):
            stored = tuple(shape[d] for d in returned)
            as_stored = "".join(names[d] for d in returned)
            raise ImageError(f"{path}: axes {axes!r} name {len(axes)} dimensions but the image "
                             f"has {len(returned)} (shape {stored}, stored as {as_stored}); give "
                             f"one letter per dimension")
        ax = check_axes(axes, len(returned), str(path))
        return fixed, dict(zip(returned, ax, strict=True)), ax, "given"
    keep = [d for d in returned if shape[d] > 1 or names[d] in "YX"]
    fixed |= {d: 0 for d in returned if d not in keep}
    named = "".join(names[d] for d in keep).replace("I", "Z")
    if not any(a in named for a in "ZTS"):  # tifffile's Q: an unnamed stack axis
        named = named.replace("Q", "Z", 1)
    origin: AxesOrigin = "guessed" if any(names[d] in "IQ" for d in keep) else "file"
    named = named.replace("Q", "")
    if len(named) == len(keep):
        for allowed in AXES_ALLOWED:
            if sorted(allowed) == sorted(named):
                return fixed, dict(zip(keep, named, strict=True)), allowed, origin
    view = _guess_axes(tuple(shape[d] for d in keep), str(path))
    return fixed, dict(zip(keep, view, strict=True)), view, "guessed"


class ImageFile:
    """An image file (TIFF or OME-Zarr) open for reading by blocks, seen with our axes.

    ``image[key]`` reads a block (numpy basic indexing over :attr:`axes`) in the stored dtype;
    :meth:`read` reads all of it. Float blocks with NaN/Inf raise :class:`ImageError`. Use as
    a context manager (or call :meth:`close`).

    Attributes:
        path: the file or ``.zarr`` folder.
        axes: e.g. ``"ZYX"``; from the caller, the file's metadata or guessed (:attr:`origin`).
        origin: 'given', 'file' (axes metadata) or 'guessed' (no axes in the file).
        pixel_sizes: µm per pixel along Z/Y/X where the file records them.
    """

    def __init__(self, path: Path, pixels: Any, file_axes: str, pixel_sizes: dict[str, float],
                 axes: str | None, samples_are_channels: bool, closer: Any = None):
        self.path, self._pixels, self._file_axes = path, pixels, file_axes
        self.pixel_sizes, self._closer = pixel_sizes, closer
        shape = tuple(pixels.shape)
        if math.prod(shape) == 0:
            self.close()
            raise ImageError(f"{path}: the image is empty (shape {shape})")
        if np.dtype(pixels.dtype).type not in _SUPPORTED_DTYPES:
            self.close()
            names = ", ".join(np.dtype(t).name for t in _SUPPORTED_DTYPES)
            raise ImageError(f"{path}: unsupported pixel type {pixels.dtype}; expected one of "
                             f"{names}")
        try:
            fixed, labels, view, self.origin = _plan_axes(shape, file_axes, axes, path,
                                                          samples_are_channels)
        except ImageError:
            self.close()
            raise
        self._fixed = fixed
        self._set_view(labels, view)

    def _set_view(self, labels: dict[int, str], view: str) -> None:
        src = "".join(labels[d] for d in sorted(labels))
        self._labels, self.axes = labels, view
        self._view = AxesView(self._pixels, src, view, fixed=self._fixed)

    def relabel(self, axes: str, origin: AxesOrigin = "given") -> None:
        """Name the dimensions of the view anew (same number), e.g. a guessed ZYX as CYX."""
        axes = check_axes(axes, len(self.axes), str(self.path))
        by_old = dict(zip(self.axes, axes, strict=True))
        self._set_view({d: by_old[a] for d, a in self._labels.items()}, axes)
        self.origin = origin

    @property
    def shape(self) -> tuple[int, ...]:
        return self._view.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._pixels.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            block = self._view[key]
        except (ImageError, IndexError):
            raise
        except Exception as err:  # noqa: BLE001 - decoders raise many types for corrupt data
            raise ImageError(f"{self.path}: cannot read the pixel data ({type(err).__name__}: "
                             f"{err}); the file is corrupt or truncated") from None
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            n_bad = int((~np.isfinite(block)).sum())
            raise ImageError(f"{self.path}: contains {n_bad} NaN/Inf pixel(s); clean or mask "
                             f"the image before using it")
        return block

    def read(self) -> np.ndarray:
        """The whole image, (…) as :attr:`shape`, in its stored dtype."""
        return self[...]

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> ImageFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_image(path: str | Path, axes: str | None = None) -> ImageFile:
    """Open a TIFF file or an OME-Zarr image (``.zarr``/``.ome.zarr`` folder) for reading.

    Samples per pixel (RGB/RGBA TIFFs, which tifffile reports as a trailing ``S`` axis) become
    a channel axis ``C`` before Y, e.g. a (64, 64, 3) RGB file is seen as (3, 64, 64) ``CYX``.
    An OME-Zarr image is read at its full resolution (the first multiscale level) with the
    axes and pixel sizes of its NGFF metadata; a plain zarr array is accepted, its axes
    guessed like those of a TIFF without metadata.

    Args:
        path: a ``.tif``/``.tiff`` file or a ``.zarr`` folder.
        axes: the axes of the image as stored (after the move of RGB samples to C); None takes
            them from the metadata (ImageJ, OME, shaped TIFF or OME-NGFF) with singleton
            dimensions dropped, or guesses them from the number of dimensions.

    Raises:
        ImageError: missing, unreadable, truncated, empty or unsupported file, a header
            declaring far more pixel data than the file holds, a zarr folder that is no array
            or OME-Zarr image, NGFF metadata that do not fit the array, or axes that do not fit.
    """
    path = Path(path)
    if is_zarr_path(path):
        from hazematching.ngff import NGFFError, open_zarr

        try:
            z = open_zarr(path)
        except NGFFError as err:
            raise ImageError(str(err)) from None
        shape = tuple(z.array.shape)
        file_axes = z.axes if z.axes is not None else "Q" * max(0, len(shape) - 2) + "YX"[
            -min(2, len(shape)):]
        return ImageFile(path, z.array, file_axes, z.pixel_sizes, axes, False)
    if path.suffix.lower() == ZARR_SUFFIX and path.exists():
        raise ImageError(f"{path}: is a file, not a zarr folder; expected an OME-Zarr image or "
                         f"a zarr array (a folder)")
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise ImageError(f"{path}: unsupported file type {path.suffix!r}; expected a TIFF "
                         f"({', '.join(TIFF_SUFFIXES)}) or an OME-Zarr folder ({ZARR_SUFFIX})")
    pixels = _TiffPixels(path)
    try:
        sizes = _tiff_pixel_sizes(pixels.tif)
    except Exception:  # noqa: BLE001 - pixel sizes are optional metadata
        sizes = {}
    return ImageFile(path, pixels, pixels.axes, sizes, axes, True, closer=pixels.close)


def read_image(path: str | Path, axes: str | None = None) -> tuple[np.ndarray, str]:
    """Read a whole TIFF file or OME-Zarr image and validate its axes and pixel values.

    As :func:`open_image` (which see for `axes`), then the whole image is read.

    Returns:
        ``(array, axes)``: the array in its stored dtype, and its upper-case axes string.

    Raises:
        ImageError: as :func:`open_image`, and for NaN/Inf pixels.
    """
    with open_image(path, axes) as image:
        return image.read(), image.axes


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
def atomic_path(path: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    An interrupted write thus never leaves a file under the final name, and a failed one (disk
    full, file too large) leaves the previous file unchanged; the latter raises
    :class:`WriteError` naming `path`. A process killed inside the block leaves its temporary
    file behind: :func:`remove_stale_partials` removes it.

    With `directory`, the temporary path is a new empty folder (e.g. for an OME-Zarr image),
    renamed as a whole; a previous `path` is moved aside first and deleted once the new one is
    in place (a killed run may leave it as ``.NAME.XXXXXXXX.old``, which
    :func:`remove_stale_partials` also removes).
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = (staging_dir(path.parent, f".{path.name}.", _PARTIAL_SUFFIX) if directory
                    else _create_partial(path))
    except OSError as err:
        raise WriteError(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        yield tmp_path
        if directory and path.exists():
            old = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_OLD_SUFFIX}")
            os.rename(path, old)
            try:
                os.rename(tmp_path, path)
            except OSError:
                os.rename(old, path)
                raise
            _remove(old)
        else:
            os.replace(tmp_path, path)
    except OSError as err:
        if isinstance(err, WriteError):
            raise
        kept = "the previous file is unchanged" if existed else "nothing was written"
        # A short write (numpy's tofile) carries no errno: on a local disk it means it is full.
        reason = err.strerror or f"{err}: is the disk full?"
        raise WriteError(f"{path}: writing failed ({reason}); {kept}") from None
    finally:
        _remove(tmp_path)


def _remove(path: Path) -> None:
    """Delete a file or a folder tree, if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_partials(paths: Iterable[Path]) -> list[Path]:
    """Delete the temporary files and folders that :func:`atomic_path` left for `paths` in a
    killed run.

    Only call this while holding the folder's lock (:func:`folder_lock`): a live writer's
    temporary file looks the same. Returns the files removed.
    """
    removed = []
    for path in paths:
        for suffix in (_PARTIAL_SUFFIX, _OLD_SUFFIX):
            for stale in path.parent.glob(f".{globlib.escape(path.name)}.*{suffix}"):
                if stale.is_file() or stale.is_dir():
                    _remove(stale)
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


#: Folders whose lock rank 0 of this process's distributed run holds for all its ranks
#: (:func:`held_by_run`), resolved.
_HELD_BY_RUN: set[Path] = set()


@contextlib.contextmanager
def held_by_run(folder: str | Path) -> Iterator[None]:
    """For the block, :func:`folder_lock` on `folder` takes nothing in this process: it is one
    of the ranks > 0 of a distributed run whose rank 0 holds the lock for every rank, until all
    of them are done (see :meth:`hazematching.distributed.Ranks.folder_lock`). Another run on
    the folder is still refused by that lock.
    """
    key = Path(folder).resolve()
    _HELD_BY_RUN.add(key)
    try:
        yield
    finally:
        _HELD_BY_RUN.discard(key)


@contextlib.contextmanager
def folder_lock(folder: str | Path, purpose: str) -> Iterator[None]:
    """Hold ``folder/.hazematching.lock`` exclusively for the block (re-entrant in a process,
    and shared by the processes of one distributed run: :func:`held_by_run`).

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
    if folder.resolve() in _HELD_BY_RUN:
        yield
        return
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


def _tiff_kwargs(axes: str, pixel_sizes: Mapping[str, float] | None) -> dict[str, Any]:
    """tifffile.imwrite options for an ImageJ hyperstack with `axes` and pixel sizes in µm (the
    resolution tags, ImageJ's unit and Z spacing, as :func:`open_image` reads them back)."""
    kwargs: dict[str, Any] = {"imagej": True, "metadata": {"axes": _imagej_axes(axes)}}
    sizes = dict(pixel_sizes or {})
    if "X" in sizes or "Y" in sizes:
        x = sizes.get("X", sizes.get("Y"))
        kwargs["resolution"] = (1.0 / x, 1.0 / sizes.get("Y", x))
        kwargs["metadata"]["unit"] = "um"
        if "Z" in sizes and "Z" in axes:
            kwargs["metadata"]["spacing"] = sizes["Z"]
    return kwargs


def write_tiff(path: str | Path, array: np.ndarray, axes: str, *,
               pixel_size_um: float | None = None,
               pixel_sizes: Mapping[str, float] | None = None) -> Path:
    """Write an ImageJ-compatible TIFF atomically (temporary name, then rename).

    Args:
        path: destination ``.tif`` file.
        array: image whose dimensions `axes` names; written as float32 unless integer.
        axes: e.g. ``"YX"``, ``"ZYX"``; ``S`` is stored as ImageJ's ``T``.
        pixel_size_um: optional lateral pixel size written as the resolution.
        pixel_sizes: µm per pixel by axis (Z/Y/X, e.g. :attr:`ImageFile.pixel_sizes` of an
            input); the resolution tags and ImageJ's Z spacing. Overrides `pixel_size_um`.
    """
    path = Path(path)
    axes = check_axes(axes, array.ndim, str(path))
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    sizes = {"Y": pixel_size_um, "X": pixel_size_um} if pixel_size_um else {}
    kwargs = _tiff_kwargs(axes, pixel_sizes if pixel_sizes is not None else sizes)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, **kwargs)
    return path


def create_tiff(path: str | Path, shape: tuple[int, ...], axes: str, *,
                pixel_sizes: Mapping[str, float] | None = None) -> RawArray:
    """Create an ImageJ TIFF of float32 zeros (`shape`, named by `axes`, which may contain T, Z,
    C, Y, X and S, stored as T) and return its pixel data for writing by blocks.

    Meant for a temporary path of :func:`atomic_path`: the data are contiguous and written
    with ``pwrite`` (:class:`~hazematching.blocks.RawArray`), so an output larger than memory
    can be streamed; the blocks are reserved on disk first, so that a full disk fails here.
    Close the returned array before renaming the file.
    """
    path = Path(path)
    if len(shape) != len(axes):
        raise ValueError(f"{path}: shape {shape} and axes {axes!r} differ in length")
    tifffile.imwrite(path, shape=shape, dtype=np.float32,
                     **_tiff_kwargs(axes, pixel_sizes))
    with tifffile.TiffFile(path) as tif:
        offset, byteorder = tif.series[0].dataoffset, tif.byteorder
    if offset is None:
        raise WriteError(f"{path}: tifffile wrote non-contiguous pixel data; cannot stream")
    reserve_space(path)
    return RawArray(path, offset, shape, np.dtype(np.float32).newbyteorder(byteorder),
                    writable=True)


def is_image_file(path: Path) -> bool:
    """A visible TIFF file or ``.zarr`` folder (:func:`is_zarr_path`): dot files (macOS
    ``._name.tif`` resource forks, this package's ``.partial`` files) are never images, whoever
    lists the folder."""
    if path.name.startswith("."):
        return False
    return (path.suffix.lower() in TIFF_SUFFIXES and path.is_file()) or is_zarr_path(path)


def image_name(path: Path) -> str:
    """An image's name without its format's suffix: ``a.tif`` → ``a``, ``a.ome.zarr`` → ``a``."""
    for suffix in (".ome" + ZARR_SUFFIX, ZARR_SUFFIX):
        if path.name.lower().endswith(suffix):
            return path.name[:-len(suffix)]
    return path.stem


def image_files(folder: str | Path) -> list[Path]:
    """Sorted image files (:func:`is_image_file`) in `folder`, not recursive; may be empty."""
    return sorted(p for p in Path(folder).iterdir() if is_image_file(p))


def list_images(folder: str | Path) -> list[Path]:
    """Sorted TIFF files and OME-Zarr folders in `folder` (not recursive); an error if the
    folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: no such folder")
    files = image_files(folder)
    if not files:
        raise ImageError(f"{folder}: contains no TIFF files ({', '.join(TIFF_SUFFIXES)}) or "
                         f"OME-Zarr folders ({ZARR_SUFFIX})")
    return files
