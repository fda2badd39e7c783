"""Import the paper's pre-trained checkpoints as ready-to-use hazematching model directories.

A published checkpoint is a plain ``state_dict`` of torchcfm's ``UNetModel``. It is fetched
(checksummed, cached), read with ``torch.load(weights_only=True)`` — which never unpickles
arbitrary objects — converted to :class:`~hazematching.nets.UNet` names and written with the
dataset's fixed normalisation, so that ``hazematching predict MODEL_DIR image.tif --out OUT``
runs it directly.

Zebrafish has one set of normalisation statistics per source channel but a single checkpoint:
each import writes one model directory for one channel (``zebrafish_channel``). Import once per
channel you need and use each model on the files whose names carry its token
(:func:`hazematching.data.datasets.source_channel_of`).

Predictions are written in confocal intensity units (de-normalised with the confocal statistics),
as the paper saved its results, except that the paper left its neuron results normalised: to
compare with those, normalise with the neuron confocal statistics first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from hazematching.data.datasets import get_preset, preset_config
from hazematching.data.download import fetch, resolve_cache_dir
from hazematching.methods import build_method
from hazematching.model_io import META_FILE, save_model
from hazematching.nets.convert import convert_torchcfm_state_dict

PAPER = "arXiv:2506.22397"


class CheckpointError(ValueError):
    """A checkpoint file that is corrupt or does not hold the published network."""


def load_torchcfm_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read a torchcfm ``state_dict`` safely (tensors only, on the CPU).

    Raises:
        CheckpointError: the file is truncated or corrupt, holds pickled objects other than
            tensors, or is not a mapping of parameter names to tensors.
    """
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises many types (UnpicklingError, RuntimeError, EOFError)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{path}: not a readable PyTorch state_dict ({type(err).__name__}: {first_line}); "
            f"the file is corrupt or holds more than tensors. Delete it and run again") from None
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: expected a state_dict (parameter names → tensors), got "
                              f"{type(state).__name__}")
    return dict(state)


def import_published_model(name: str, out_dir: str | Path, *, base_url: str | None = None,
                           cache_dir: str | Path | None = None, zebrafish_channel: str = "ch0",
                           progress: bool = True, overwrite: bool = False) -> Path:
    """Write the published model of dataset `name` as a hazematching model directory.

    Args:
        name: a registered dataset with a checkpoint (see ``datasets.dataset_names()``).
        out_dir: model directory to write.
        base_url: replaces the published checkpoint address, ``<base_url>/<name>/best_model.pth``
            (mirrors, tests).
        cache_dir: where the checkpoint is kept (default: ``download.resolve_cache_dir()``).
        zebrafish_channel: source channel whose statistics normalise the model, for datasets
            with per-channel statistics (zebrafish: 'ch0', 'ch1', 'ch2'); ignored otherwise.
        progress: show a download progress bar.
        overwrite: replace a different model already in `out_dir`.

    Returns:
        `out_dir`. Importing the same checkpoint and channel again returns it unchanged.

    Raises:
        UnknownDatasetError, DownloadError, ChecksumError, CheckpointError, FileExistsError.
    """
    preset = get_preset(name)
    if preset.checkpoint_sha256 is None:
        raise ValueError(f"dataset {name!r} has no published checkpoint")
    channel = zebrafish_channel if preset.source_channels else None
    normalizer = preset.normalizer(channel)  # an unknown channel fails before any download
    out_dir = Path(out_dir).expanduser()
    url = preset.checkpoint_url(base_url)
    source = {"dataset": preset.name, "url": url, "sha256": preset.checkpoint_sha256,
              "source_channel": channel, "reference": PAPER}
    if (out_dir / META_FILE).is_file():
        if _same_import(out_dir, source):
            return out_dir
        if not overwrite:
            raise FileExistsError(f"{out_dir} already holds a different model; choose another "
                                  f"folder or pass overwrite=True")
    checkpoint = fetch(url, resolve_cache_dir(cache_dir) / "checkpoints" / preset.name /
                       "best_model.pth", preset.checkpoint_sha256, progress=progress)
    state = load_torchcfm_checkpoint(checkpoint)
    config = preset_config(preset.name)
    method = build_method(config)
    try:
        method.net.load_state_dict(convert_torchcfm_state_dict(state, config.network),
                                   strict=True)
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{checkpoint}: does not hold the published {preset.name} network "
                              f"(torchcfm UNetModel, channel_mult {preset.channel_mult}): "
                              f"{err}") from None
    return save_model(out_dir, method, normalizer, extra={"published": source})


def _same_import(out_dir: Path, source: dict[str, object]) -> bool:
    """Whether `out_dir` already holds this checkpoint with this channel's normalisation."""
    try:
        previous = json.loads((out_dir / META_FILE).read_text()).get("published") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    return all(previous.get(k) == source[k] for k in ("dataset", "sha256", "source_channel"))
