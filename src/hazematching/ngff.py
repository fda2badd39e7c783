"""OME-Zarr (OME-NGFF 0.4 on Zarr v2) images in and out, with axes and pixel sizes.

Reading takes the full-resolution level (the first dataset) of a multiscale image, or a plain
zarr array. The metadata are validated with ome-zarr-py (``ome_zarr.axes.Axes``,
``FormatV04.validate_coordinate_transformations``) and written with its
``write_multiscales_metadata``; the arrays themselves are created and filled here with zarr, a
block at a time, because ome-zarr-py's writers take a whole (numpy or dask) array.

Axes map to this package's letters: ``t`` → T, ``c`` → C, ``z``/``y``/``x`` → Z/Y/X, one
custom-type axis → S (a stack of independent planes). On output, S is written as ``t`` (as
TIFF outputs store it as ImageJ's T) and a posterior-sample axis as the custom axis ``sample``.
Pixel sizes are in µm.

Needs the ``zarr`` extra (``pip install 'hazematching[zarr]'``: zarr 2 and ome-zarr 0.11, its last
release on zarr 2, which microsim needs: it pins ``zarr<3``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: NGFF axis names by our letter (K: posterior samples), and their NGFF axis type.
_NGFF_NAME = {"T": "t", "S": "t", "C": "c", "Z": "z", "Y": "y", "X": "x", "K": "sample"}
_NGFF_TYPE = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
#: Micrometres per unit, for the NGFF (UDUNITS-2) length units and common abbreviations.
_UM_PER_UNIT = {"angstrom": 1e-4, "nanometer": 1e-3, "nm": 1e-3, "micrometer": 1.0,
                "micron": 1.0, "um": 1.0, "µm": 1.0, "millimeter": 1e3, "mm": 1e3,
                "centimeter": 1e4, "cm": 1e4, "meter": 1e6, "m": 1e6}
#: Side (px) of the Y/X chunks written; every other dimension is chunked by 1.
CHUNK_YX = 256


class NGFFError(ValueError):
    """A zarr path that is not a usable OME-Zarr image; io turns it into an ImageError."""


@dataclass
class ZarrImage:
    """The full-resolution array of a zarr path, and what its metadata say about it.

    Attributes:
        array: the zarr array (read lazily by blocks).
        axes: one letter per dimension (T, C, Z, Y, X, S), or None for a plain array.
        pixel_sizes: µm per pixel along Z/Y/X where the metadata give a length unit.
        level: the path of the array inside the group ('' for a plain array).
    """

    array: Any
    axes: str | None
    pixel_sizes: dict[str, float] = field(default_factory=dict)
    level: str = ""


def _zarr():
    try:
        import zarr
    except ImportError:
        raise NGFFError("reading or writing OME-Zarr needs zarr: pip install "
                        "'hazematching[zarr]'") from None
    return zarr


def _format():
    try:
        from ome_zarr.format import FormatV04
    except ImportError:
        raise NGFFError("OME-Zarr metadata need ome-zarr: pip install 'hazematching[zarr]'"
                        ) from None
    return FormatV04()


def open_zarr(path: str | Path) -> ZarrImage:
    """Open a zarr array, an OME-Zarr image (multiscales) or a bioformats2raw container (its
    image ``0``), read-only.

    Raises:
        NGFFError: the path is no zarr array or group, a Zarr v3 store, a group without
            multiscales, or metadata that are missing or do not fit the array (the message
            names the path and what was expected).
    """
    zarr = _zarr()
    path = Path(path)
    if (path / "zarr.json").is_file():
        raise NGFFError(f"{path}: is a Zarr v3 store (zarr.json); only Zarr v2 (OME-NGFF 0.4 "
                        f"and earlier) can be read here, e.g. convert it with ome-zarr-py")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises several types for "nothing here"
        raise NGFFError(f"{path}: is neither a zarr array nor a zarr group (no .zarray or "
                        f".zgroup; {type(err).__name__}: {err}); expected an OME-Zarr image "
                        f"or a zarr array") from None
    if isinstance(node, zarr.Array):
        return ZarrImage(node, None)
    attrs = node.attrs.asdict()
    if "multiscales" not in attrs and "bioformats2raw.layout" in attrs and "0" in node:
        sub = open_zarr(path / "0")
        return ZarrImage(sub.array, sub.axes, sub.pixel_sizes, f"0/{sub.level}")
    if "multiscales" not in attrs:
        raise NGFFError(f"{path}: is a zarr group without OME-NGFF 'multiscales' metadata "
                        f"(attributes: {sorted(attrs) or 'none'}); expected an OME-Zarr image "
                        f"or a zarr array")
    return _read_multiscales(path, node, attrs["multiscales"])


def _read_multiscales(path: Path, group: Any, multiscales: Any) -> ZarrImage:
    zarr = _zarr()
    try:
        ms = multiscales[0]
        datasets = ms["datasets"]
        level = str(datasets[0]["path"])
    except (TypeError, KeyError, IndexError):
        raise NGFFError(f"{path}: the 'multiscales' metadata name no dataset (expected "
                        f"multiscales[0].datasets[0].path)") from None
    array = group.get(level)
    if not isinstance(array, zarr.Array):
        raise NGFFError(f"{path}: the full-resolution dataset {level!r} named by the metadata "
                        f"is not a zarr array in the group")
    version = str(ms.get("version", "0.4"))
    axes = ms.get("axes")
    if axes is None:
        if version not in ("0.1", "0.2"):
            raise NGFFError(f"{path}: OME-NGFF {version} metadata without 'axes'; expected one "
                            f"entry per dimension of {level!r} (shape {array.shape})")
        axes = ["t", "c", "z", "y", "x"]  # implied by NGFF 0.1/0.2
    axes = [a if isinstance(a, dict) else {"name": a, **(
        {"type": _NGFF_TYPE[a]} if a in _NGFF_TYPE else {})} for a in axes]
    if len(axes) != array.ndim:
        raise NGFFError(f"{path}: the metadata name {len(axes)} axes "
                        f"({', '.join(str(a.get('name')) for a in axes)}) but the "
                        f"full-resolution array {level!r} has {array.ndim} dimensions (shape "
                        f"{array.shape})")
    letters = _letters(path, axes)
    pixel_sizes: dict[str, float] = {}
    if version == "0.4":
        from ome_zarr.axes import Axes

        fmt = _format()
        try:
            Axes(axes, fmt)
            fmt.validate_coordinate_transformations(
                array.ndim, len(datasets), [d.get("coordinateTransformations") for d in datasets])
        except (ValueError, TypeError, AssertionError) as err:
            raise NGFFError(f"{path}: invalid OME-NGFF 0.4 metadata: {err}") from None
        scale = np.asarray(datasets[0]["coordinateTransformations"][0]["scale"], np.float64)
        for t in ms.get("coordinateTransformations") or []:
            if t.get("type") == "scale":
                scale = scale * np.asarray(t["scale"], np.float64)
        for letter, axis, s in zip(letters, axes, scale, strict=True):
            factor = _UM_PER_UNIT.get(str(axis.get("unit", "")).lower())
            if letter in "ZYX" and factor is not None and s > 0:
                pixel_sizes[letter] = float(s) * factor
    return ZarrImage(array, letters, pixel_sizes, level)


def _letters(path: Path, axes: Sequence[Mapping[str, Any]]) -> str:
    known = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
    out = ""
    for a in axes:
        name, kind = str(a.get("name", "")).lower(), a.get("type")
        if name in known:
            out += known[name]
        elif kind == "time":
            out += "T"
        elif kind == "channel":
            out += "C"
        elif kind != "space" and "S" not in out:
            out += "S"
        else:
            raise NGFFError(f"{path}: axis {a} is not one of t, c, z, y, x (or one custom "
                            f"non-space axis); cannot map it to the image's axes")
    if len(set(out)) != len(out):
        raise NGFFError(f"{path}: the axes {[a.get('name') for a in axes]} repeat a kind")
    return out


def create_ome_zarr(path: str | Path, shape: Sequence[int], axes: str,
                    pixel_sizes: Mapping[str, float] | None = None, *, name: str | None = None,
                    dtype: Any = np.float32) -> Any:
    """Create an empty single-level OME-Zarr image (NGFF 0.4) at `path` and return its array.

    Args:
        path: the image folder (an empty folder, e.g. a temporary one renamed when complete).
        shape: one length per letter of `axes`.
        axes: letters T/S (written as the time axis ``t``), K (posterior samples, the custom
            axis ``sample``), C, Z, Y, X, in NGFF order: time, then channel or custom, then
            space.
        pixel_sizes: µm per pixel along Z/Y/X (written as ``scale`` with unit micrometer);
            other axes get scale 1.
        name: the image's name in the metadata.

    The array ``0`` is chunked 1 × … × 256 × 256 (one plane, one 256-px square per chunk;
    napari and BigDataViewer-style viewers read such chunks), compressed with zarr's default
    Blosc, with the '/' dimension separator that NGFF 0.4 requires.
    """
    zarr = _zarr()
    pixel_sizes = dict(pixel_sizes or {})
    if len(shape) != len(axes):
        raise ValueError(f"shape {tuple(shape)} and axes {axes!r} differ in length")
    ngff_axes = []
    for a in axes:
        entry = {"name": _NGFF_NAME[a]}
        if entry["name"] in _NGFF_TYPE:
            entry["type"] = _NGFF_TYPE[entry["name"]]
        if a in pixel_sizes:
            entry["unit"] = "micrometer"
        ngff_axes.append(entry)
    scale = [float(pixel_sizes.get(a, 1.0)) for a in axes]
    chunks = [min(CHUNK_YX, n) if a in "YX" else 1 for a, n in zip(axes, shape, strict=True)]
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(str(path), mode="a")
    array = group.create_dataset("0", shape=tuple(int(n) for n in shape), chunks=chunks,
                                 dtype=dtype, fill_value=0, dimension_separator="/")
    write_multiscales_metadata(group, [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": scale}]}], fmt=_format(), axes=ngff_axes,
        name=name or Path(path).name)
    return array


def reopen_created(path: str | Path) -> Any:
    """The array of an image that :func:`create_ome_zarr` created at `path` (by this or
    another process of a run), opened for writing chunks; its metadata stay as written."""
    return _zarr().open_array(str(Path(path) / "0"), mode="r+")
