"""The model directory: weights, validated config, normalisation, calibration and version.

Layout of a model directory (or of a ``.zip`` archive of the same files)::

    config.yaml            the full ModelConfig
    weights.safetensors    the method's state dict (no pickled objects)
    model.json             format version, package version, normalisation, calibration

``model.json`` is written last, so a directory without it is never taken for a finished model.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hazematching.calibration import Calibration
from hazematching.config import ModelConfig
from hazematching.data.normalization import Normalizer
from hazematching.io import atomic_path, atomic_write_text
from hazematching.methods import build_method
from hazematching.methods.base import Method

FORMAT = "hazematching-model"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, META_FILE = "config.yaml", "weights.safetensors", "model.json"


class ModelFileError(ValueError):
    """A path that is not a usable hazematching model; the message says why."""


@dataclass
class LoadedModel:
    config: ModelConfig
    method: Method
    normalizer: Normalizer
    calibration: Calibration | None
    meta: dict[str, Any]


def save_model(path: str | Path, method: Method, normalizer: Normalizer,
               calibration: Calibration | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a model directory (files written atomically, model.json last)."""
    from hazematching import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    method.config.to_yaml(path / CONFIG_FILE)
    state = {k: v.detach().to("cpu").contiguous() for k, v in method.state_dict().items()}
    with atomic_path(path / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hazematching_version": __version__,
        "method": method.config.method,
        "normalization": normalizer.to_dict(),
        "calibration": calibration.to_dict() if calibration else None,
        **(extra or {}),
    }
    atomic_write_text(path / META_FILE, json.dumps(meta, indent=2))
    return path


def export_archive(model_dir: str | Path, archive: str | Path) -> Path:
    """Pack a model directory's three files into one ``.zip`` archive."""
    model_dir, archive = Path(model_dir), Path(archive)
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in (CONFIG_FILE, WEIGHTS_FILE, META_FILE):
            zf.write(model_dir / name, name)
    return archive


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path / META_FILE}: corrupt ({err})") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path / META_FILE}: not a hazematching model file")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version!r} (written by hazematching "
            f"{meta.get('hazematching_version')}) is newer than this installation supports "
            f"({FORMAT_VERSION}); upgrade hazematching")
    return meta


def load_model_files(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Read a model directory or ``.zip`` archive.

    Raises:
        ModelFileError: missing files, corrupt weights, incompatible version, or weights that do
            not fit the config.
    """
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(path) as zf:
                zf.extractall(tmp)
            return load_model_files(Path(tmp), device)
    if not path.is_dir():
        raise ModelFileError(f"{path}: not a model directory or .zip archive (does it exist?)")
    missing = [n for n in (META_FILE, CONFIG_FILE, WEIGHTS_FILE) if not (path / n).is_file()]
    if missing:
        raise ModelFileError(f"{path}: not a finished hazematching model (missing "
                             f"{', '.join(missing)}); was training interrupted?")
    meta = _read_meta(path)
    config = ModelConfig.from_yaml(path / CONFIG_FILE)
    method = build_method(config)
    try:
        state = load_file(str(path / WEIGHTS_FILE), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path / WEIGHTS_FILE}: corrupt or truncated weights ({err})") \
            from None
    try:
        result = method.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ModelFileError(f"{path / WEIGHTS_FILE}: weights do not fit the network in "
                             f"{CONFIG_FILE}: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelFileError(
            f"{path / WEIGHTS_FILE}: weights do not fit the {config.method!r} network in "
            f"{CONFIG_FILE} (missing {result.missing_keys[:3]}, unexpected "
            f"{result.unexpected_keys[:3]})")
    cal = meta.get("calibration")
    return LoadedModel(config=config, method=method.eval(),
                       normalizer=Normalizer.from_dict(meta["normalization"]),
                       calibration=Calibration(**cal) if cal else None, meta=meta)
