"""The model directory: weights, validated config, normalisation, calibration and version.

Layout of a model directory (or of a ``.zip`` archive of the same files)::

    config.yaml            the full ModelConfig
    weights.safetensors    the method's state dict (no pickled objects)
    model.json             format version, package version, normalisation, calibration

``model.json`` is written last, so a directory without it is never taken for a finished model.
Every field of ``model.json`` is validated (:class:`ModelMeta`); the network described by
``config.yaml`` is built on PyTorch's meta device and compared with the weights file's header
before any memory is allocated, so a corrupt or foreign file gives a :class:`ModelFileError`
naming the file and the field, never an arbitrary exception or an unbounded allocation.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as serialize_weights

from hazematching.calibration import Calibration
from hazematching.config import ConfigError, ModelConfig
from hazematching.data.normalization import Normalizer
from hazematching.io import atomic_path
from hazematching.methods import build_method
from hazematching.methods.base import Method

FORMAT = "hazematching-model"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, META_FILE = "config.yaml", "weights.safetensors", "model.json"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, META_FILE)
#: An archive may declare at most this many times its size (+ 1 MiB) as uncompressed files.
_MAX_ARCHIVE_EXPANSION = 16


class ModelFileError(ValueError):
    """A path that is not a usable hazematching model; the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChannelStatsMeta(_Strict):
    """Normalisation of one channel: x_norm = (x − offset) / scale, intensity units."""

    offset: FiniteFloat
    scale: FiniteFloat = Field(gt=0)


class NormalizationMeta(_Strict):
    """``model.json``'s ``normalization`` (see
    :class:`~hazematching.data.normalization.Normalizer`)."""

    kind: Literal["meanstd", "percentile"]
    percentiles: tuple[FiniteFloat, FiniteFloat] = (0.1, 99.9)
    target: ChannelStatsMeta
    inputs: list[ChannelStatsMeta] = Field(min_length=1)


class CalibrationMeta(_Strict):
    """``model.json``'s ``calibration``: σ_cal = a·σ + b (b in normalised units), or with
    ``knots`` the increasing curve through [σ, σ_cal] pairs (see :mod:`hazematching.calibration`).
    """

    a: FiniteFloat
    b: FiniteFloat
    fitted_for: dict[str, StrictBool | StrictInt | FiniteFloat | StrictStr] | None = None
    knots: list[tuple[FiniteFloat, FiniteFloat]] | None = Field(None, max_length=10_000)

    @model_validator(mode="after")
    def _valid_map(self) -> CalibrationMeta:
        self.build()  # knots out of order, or a monotone map with a ≤ 0, fail here
        return self

    def build(self) -> Calibration:
        """The :class:`Calibration` these fields describe."""
        return Calibration(self.a, self.b, self.fitted_for, tuple(self.knots or ()))


class ModelMeta(BaseModel):
    """The schema of ``model.json``. Unknown fields (e.g. ``published``) are kept as they are."""

    model_config = ConfigDict(extra="allow")

    format: Literal["hazematching-model"]
    format_version: StrictInt = Field(ge=1)
    hazematching_version: str
    method: str
    normalization: NormalizationMeta
    calibration: CalibrationMeta | None = None
    best_checkpoint: str | None = None
    val_loss: FiniteFloat | None = None
    epochs: StrictInt | None = Field(None, ge=0)
    steps: StrictInt | None = Field(None, ge=0)


@dataclass
class LoadedModel:
    config: ModelConfig
    method: Method
    normalizer: Normalizer
    calibration: Calibration | None
    meta: dict[str, Any]


def save_model(path: str | Path, method: Method, normalizer: Normalizer,
               calibration: Calibration | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a model directory: every file is first written in full under a temporary name,
    then the files are renamed into place, model.json last.

    A failed write (disk full) thus leaves the previous model as it was. Files whose content is
    unchanged are not rewritten (re-saving after calibration only replaces model.json); when the
    config or the weights change, model.json is removed just before the renames, so that a
    process killed among them leaves a directory that does not load rather than one whose files
    disagree.
    """
    from hazematching import __version__

    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in method.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hazematching_version": __version__,
        "method": method.config.method,
        "normalization": normalizer.to_dict(),
        "calibration": calibration.to_dict() if calibration else None,
        **(extra or {}),
    }
    contents = {CONFIG_FILE: method.config.to_yaml().encode(),
                WEIGHTS_FILE: serialize_weights(state)}
    changed = [name for name, data in contents.items() if not _holds(path / name, data)]
    contents[META_FILE] = json.dumps(meta, indent=2).encode()
    with contextlib.ExitStack() as stack:
        # Entered first, renamed last: model.json.
        staged = {name: stack.enter_context(atomic_path(path / name))
                  for name in [META_FILE, *changed]}
        for name, tmp in staged.items():
            tmp.write_bytes(contents[name])
        if changed:
            (path / META_FILE).unlink(missing_ok=True)
    return path


def _holds(path: Path, data: bytes) -> bool:
    return path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data


def export_archive(model_dir: str | Path, archive: str | Path) -> Path:
    """Pack a model directory's three files into one ``.zip`` archive."""
    model_dir, archive = Path(model_dir), Path(archive)
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in MODEL_FILES:
            zf.write(model_dir / name, name)
    return archive


def _field_errors(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
                     for e in err.errors())


def read_meta(file: Path, shown: str | None = None) -> ModelMeta:
    """Read and validate ``model.json``; `shown` is the name used in messages (default `file`).

    Raises:
        ModelFileError: unreadable or not JSON, not a hazematching model file, a newer format
            version, or a field that does not fit :class:`ModelMeta` (named in the message).
    """
    shown = shown or str(file)
    try:
        meta = json.loads(file.read_bytes())
    except (OSError, ValueError, RecursionError) as err:  # JSON and UTF-8 errors are ValueErrors
        raise ModelFileError(f"{shown}: corrupt ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{shown}: corrupt (expected a JSON object, found "
                             f"{type(meta).__name__})")
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{shown}: not a hazematching model file (format "
                             f"{meta.get('format')!r}, expected {FORMAT!r})")
    version = meta.get("format_version")
    if type(version) is not int or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{shown}: model format version {version!r} (written by hazematching "
            f"{meta.get('hazematching_version')!r}) is newer than this installation supports "
            f"({FORMAT_VERSION}); upgrade hazematching")
    try:
        return ModelMeta.model_validate(meta)
    except ValidationError as err:
        raise ModelFileError(f"{shown}: invalid field {_field_errors(err)}") from None


def _read_config(file: Path, shown: str) -> ModelConfig:
    try:
        return ModelConfig.from_yaml(file)
    except ConfigError as err:
        raise ModelFileError(str(err).replace(str(file), shown, 1)) from None
    except (OSError, ValueError, RecursionError) as err:
        raise ModelFileError(f"{shown}: unreadable ({type(err).__name__}: "
                             f"{str(err).replace(str(file), shown)})") from None


class _TooManyParameters(Exception):
    pass


def _expected_shapes(config: ModelConfig, limit: int) -> dict[str, tuple[int, ...]] | None:
    """State-dict shapes of the network `config` describes, built on the meta device (no
    memory). None if the method cannot be built on the meta device (the real build then checks
    the fit).

    Raises:
        _TooManyParameters: the network registers more than `limit` parameters; building stops
            there, so that a corrupt config cannot make this slow.
    """
    count = 0

    def hook(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyParameters

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(hook)
    try:
        with torch.device("meta"):
            method = build_method(config)
    except _TooManyParameters:
        raise
    except Exception:  # noqa: BLE001 - a method that needs real tensors when it is built
        return None
    finally:
        handle.remove()
    return {k: tuple(v.shape) for k, v in method.state_dict().items()}


def _check_fit(config: ModelConfig, weights: Path, shown: str) -> None:
    """Compare the weights file's header (names, shapes) with the configured network."""
    try:
        with safe_open(str(weights), "pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"{shown}: corrupt or truncated weights ({err})") from None
    fails = f"{shown}: weights do not fit the {config.method!r} network in {CONFIG_FILE}"
    try:
        expected = _expected_shapes(config, limit=2 * len(found) + 16)
    except _TooManyParameters:
        raise ModelFileError(f"{fails} (the network has far more parameters than the "
                             f"{len(found)} tensors in the file)") from None
    if expected is None or expected == found:
        return
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    detail = "; ".join(f"{label} {names[:3]}" for label, names in (
        ("missing", missing), ("unexpected", unexpected), ("different shapes of", shapes))
        if names)
    raise ModelFileError(f"{fails} ({detail})")


def _load_weights(method: Method, weights: Path, shown: str, device: str) -> None:
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"{shown}: corrupt or truncated weights ({err})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelFileError(f"{shown}: NaN/Inf in {len(bad)} weight tensor(s) ({bad[:3]}); "
                             f"the file is corrupt or training diverged")
    try:
        method.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFileError(f"{shown}: weights do not fit the network in {CONFIG_FILE}: "
                             f"{err}") from None


def _extract_archive(archive: Path, dest: Path) -> None:
    """Extract the three model files of `archive` (nothing else) into `dest`."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            missing = [n for n in MODEL_FILES if n not in infos]
            if missing:
                raise ModelFileError(f"{archive}: not a hazematching model archive (missing "
                                     f"{', '.join(missing)})")
            declared = sum(infos[n].file_size for n in MODEL_FILES)
            if declared > _MAX_ARCHIVE_EXPANSION * archive.stat().st_size + 2**20:
                raise ModelFileError(f"{archive}: declares {declared / 2**20:.0f} MiB of files "
                                     f"in a {archive.stat().st_size / 2**20:.1f} MiB archive; "
                                     f"it is corrupt")
            for name in MODEL_FILES:
                (dest / name).write_bytes(zf.read(infos[name]))
    except ModelFileError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile/zlib raise many types for corrupt zips
        raise ModelFileError(f"{archive}: corrupt model archive ({type(err).__name__}: "
                             f"{err})") from None


def load_model_files(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Read a model directory or ``.zip`` archive.

    Raises:
        ModelFileError: missing files, corrupt weights, incompatible version, an invalid field in
            model.json or config.yaml, or weights that do not fit the config.
    """
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory() as tmp:
            _extract_archive(path, Path(tmp))
            return _load_folder(Path(tmp), str(path), device)
    if not path.is_dir():
        raise ModelFileError(f"{path}: not a model directory or .zip archive (does it exist?)")
    missing = [n for n in MODEL_FILES if not (path / n).is_file()]
    if missing:
        raise ModelFileError(f"{path}: not a finished hazematching model (missing "
                             f"{', '.join(missing)}); was training interrupted?")
    return _load_folder(path, str(path), device)


def _load_folder(folder: Path, shown: str, device: str | torch.device) -> LoadedModel:
    names = {n: f"{shown}/{n}" for n in MODEL_FILES}
    meta = read_meta(folder / META_FILE, names[META_FILE])
    config = _read_config(folder / CONFIG_FILE, names[CONFIG_FILE])
    if meta.method != config.method:
        raise ModelFileError(f"{names[META_FILE]}: method {meta.method!r} does not match "
                             f"{CONFIG_FILE}'s {config.method!r}")
    if len(meta.normalization.inputs) != config.in_channels:
        raise ModelFileError(f"{names[META_FILE]}: normalization.inputs has "
                             f"{len(meta.normalization.inputs)} channel(s) but {CONFIG_FILE} "
                             f"has in_channels={config.in_channels}")
    _check_fit(config, folder / WEIGHTS_FILE, names[WEIGHTS_FILE])
    try:
        method = build_method(config)
    except Exception as err:  # noqa: BLE001 - a combination of valid fields a network rejects
        raise ModelFileError(f"{names[CONFIG_FILE]}: the configured {config.method!r} network "
                             f"cannot be built ({type(err).__name__}: {err})") from None
    _load_weights(method, folder / WEIGHTS_FILE, names[WEIGHTS_FILE], str(device))
    norm = meta.normalization.model_dump()
    cal = meta.calibration
    return LoadedModel(config=config, method=method.eval(), normalizer=Normalizer.from_dict(norm),
                       calibration=cal.build() if cal else None,
                       meta=meta.model_dump(mode="json"))
