"""Read a BioImage Model Zoo package written by :func:`hazematching.bmz.export_bmz` back into a
:class:`~hazematching.Model`: the config, normalisation and calibration stored under
``config.hazematching`` and the U-Net weights of ``weights.pt``, exactly as exported."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hazematching.bmz.export import BMZ_FORMAT, BMZ_FORMAT_VERSION, unet_of
from hazematching.calibration import Calibration
from hazematching.config import ModelConfig
from hazematching.data.normalization import Normalizer
from hazematching.methods import build_method

if TYPE_CHECKING:
    from hazematching.api import Model


def load_bmz(package: str | Path) -> Model:
    """The model a hazematching BMZ package (.zip) was exported from.

    Raises:
        ValueError: not a readable BMZ package, a package not exported by hazematching, one
            from a newer hazematching, or weights that do not fit its network.
        FileNotFoundError: no such file.
    """
    from hazematching.api import Model

    package = Path(package)
    meta, weights = _read(package)
    config = ModelConfig.from_dict(meta["config"], source=f"{package}: config.hazematching")
    method = build_method(config)
    prefix, unet = unet_of(method)
    state = {f"{prefix}.{k}": v for k, v in unet.state_dict().items()}
    if set(state) != set(method.state_dict()):
        raise ValueError(f"{package}: method {config.method!r} has weights outside its U-Net, "
                         f"which a BMZ package does not carry")
    stored = {k.removeprefix("net."): v for k, v in weights.items() if k.startswith("net.")}
    try:
        unet.load_state_dict(stored)
    except RuntimeError as err:
        raise ValueError(f"{package}: weights do not fit the network in its config: "
                         f"{err}") from None
    cal = meta.get("calibration")
    return Model(config, method=method.eval(),
                 normalizer=Normalizer.from_dict(meta["normalization"]),
                 calibration=Calibration(**cal) if cal else None,
                 provenance={**meta.get("provenance", {}), "imported_from_bmz": package.name})


def import_bmz(package: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Model:
    """Restore a hazematching BMZ package as a model directory (see :mod:`hazematching.model_io`)
    that ``load_model`` and ``hazematching predict`` read.

    Raises:
        FileExistsError: `out_dir` already holds a model and not `overwrite`.
        ValueError, FileNotFoundError: see :func:`load_bmz`.
    """
    from hazematching.model_io import META_FILE

    out_dir = Path(out_dir)
    if (out_dir / META_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a model; pass overwrite=True (CLI: "
                              f"--overwrite) or choose another folder")
    model = load_bmz(package)
    model.save(out_dir)
    return model


def _read(package: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``config.hazematching``, weights state dict) of a package, checked."""
    if not package.is_file():
        raise FileNotFoundError(f"{package}: no such BMZ package (.zip)")
    if not zipfile.is_zipfile(package):
        raise ValueError(f"{package}: not a BMZ package (expected a .zip archive)")
    try:
        from bioimageio.spec import load_model_description
    except ImportError:
        raise ImportError("reading BMZ packages needs bioimageio.spec: pip install "
                          "'hazematching[bmz]'") from None
    try:
        # A Path, never a str: bioimageio.spec looks a str that is no file up as a zoo ID online.
        descr = load_model_description(package, perform_io_checks=False)
    except ValueError as err:
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"{package}: not a valid BMZ model package ({reason})") from None
    config = descr.config
    meta = (config if isinstance(config, dict) else config.model_extra or {}).get("hazematching")
    if (meta.get("format") if isinstance(meta, dict) else None) != BMZ_FORMAT:
        raise ValueError(f"{package}: not a package exported by hazematching (its config has no "
                         f"'hazematching' section)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > BMZ_FORMAT_VERSION:
        raise ValueError(f"{package}: hazematching BMZ format version {version!r} (written by "
                         f"hazematching {meta.get('hazematching_version')}) is newer than this "
                         f"installation supports ({BMZ_FORMAT_VERSION}); upgrade hazematching")
    entry = descr.weights.pytorch_state_dict
    if entry is None:
        raise ValueError(f"{package}: has no pytorch_state_dict weights")
    data = entry.get_reader().read()
    try:
        weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        raise ValueError(f"{package}: corrupt weights {entry.source} ({err})") from None
    return meta, weights
