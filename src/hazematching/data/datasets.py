"""The paper's published datasets: registry, per-dataset presets and download + extraction.

Each :class:`DatasetPreset` records what the paper's public release fixes for one dataset: the
archive and its SHA-256, the pre-trained checkpoint and its SHA-256, the patch size, the inference
tiles, the z-score statistics the published network was trained with, the microtubule test crop
and the folder names inside the archive.

Normalisation of a published model is *fixed* by these statistics, never re-fitted: use
:meth:`DatasetPreset.normalizer`. Zebrafish has one set of statistics per source channel; the
channel is named by a ``ch0``/``ch1``/``ch2`` token in each file name (:func:`source_channel_of`).

The microtubule test images were centre-cropped by 56 px per side before inference. The archive
is extracted unchanged (so that it stays byte-for-byte the verified release) and the crop is
applied by :func:`crop_test_image`, which evaluation code calls on every test image (target and
input alike) of a preset with ``test_crop > 0`` before predicting.
"""

from __future__ import annotations

import errno
import shutil
import zipfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hazematching.config import ModelConfig
from hazematching.data.download import disk_full_message, fetch, resolve_cache_dir
from hazematching.data.normalization import ChannelStats, Normalizer
from hazematching.io import staging_dir
from hazematching.nets.convert import network_config_from_torchcfm

DATA_BASE_URL = "https://download.fht.org/jug/hazematching/data/"
CHECKPOINT_BASE_URL = "https://download.fht.org/jug/hazematching/checkpoints/"
#: Key of :attr:`DatasetPreset.stats` for datasets with a single set of statistics.
ALL_CHANNELS = "all"


class DatasetError(RuntimeError):
    """A downloaded archive or an existing dataset folder is not usable; the message says why."""


class UnknownDatasetError(ValueError):
    """A dataset name that is not in the registry; the message lists the valid names."""


class NormStats(BaseModel):
    """Z-score statistics in raw intensity units: (confocal ch0, widefield ch1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    means: tuple[float, float]
    stds: tuple[float, float] = Field(description="Must be > 0.")

    @model_validator(mode="after")
    def _positive(self) -> NormStats:
        if min(self.stds) <= 0:
            raise ValueError(f"standard deviations must be > 0, got {self.stds}")
        return self

    def normalizer(self) -> Normalizer:
        """The fixed 'meanstd' normaliser: offset = mean, scale = std; target = confocal."""
        return Normalizer(kind="meanstd", target=ChannelStats(self.means[0], self.stds[0]),
                          inputs=(ChannelStats(self.means[1], self.stds[1]),))


class SplitFolders(BaseModel):
    """Folder names inside an extracted dataset (all must exist after extraction)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    train: str = Field(description="Training pairs (pre-cropped patches where available).")
    val: str = Field(description="Validation pairs used during training.")
    test: str
    fid_reference: str = Field(description="Reference images for FID.")
    others: tuple[str, ...] = Field((), description="Further folders of the release.")

    @property
    def required(self) -> tuple[str, ...]:
        """Every folder name, each once, in a stable order."""
        return tuple(dict.fromkeys((self.train, self.val, self.test, self.fid_reference,
                                    *self.others)))


class DatasetPreset(BaseModel):
    """What the paper's public release fixes for one dataset (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Also the folder name.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of the dataset archive.")
    checkpoint_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                          description="Of the checkpoint; None if unpublished.")
    patch_size: int = Field(ge=16, description="Training patch side (px).")
    tile_size: int = Field(ge=16, description="Published inference tile side (px).")
    tile_keep: int = Field(ge=1, description="Central part of each tile kept at inference (px).")
    channel_mult: tuple[int, ...] = Field(description="torchcfm UNetModel channel_mult.")
    stats: dict[str, NormStats] = Field(
        description=f"Z-score statistics by source channel token ('ch0', …) or {ALL_CHANNELS!r}.")
    test_crop: int = Field(0, ge=0, description="Pixels removed from each side of the test "
                           "images before inference (see crop_test_image).")
    folders: SplitFolders
    data_base_url: str = DATA_BASE_URL
    checkpoint_base_url: str = CHECKPOINT_BASE_URL

    @model_validator(mode="after")
    def _consistent(self) -> DatasetPreset:
        if not self.stats:
            raise ValueError("stats must hold at least one set of statistics")
        if ALL_CHANNELS in self.stats and len(self.stats) > 1:
            raise ValueError(f"stats: {ALL_CHANNELS!r} cannot be combined with per-channel sets")
        if not self.tile_size <= 2 * self.tile_keep <= 2 * self.tile_size or (
                self.tile_size - self.tile_keep) % 2:
            raise ValueError(f"tile_keep ({self.tile_keep}) must lie between half the tile_size "
                             f"and tile_size ({self.tile_size}) with an even difference (a "
                             f"centred crop)")
        return self

    def url(self, base_url: str | None = None) -> str:
        """Address of the dataset archive; `base_url` replaces the published base (a mirror)."""
        return _join(base_url or self.data_base_url, f"{self.name}.zip")

    def checkpoint_url(self, base_url: str | None = None) -> str:
        """Address of the pre-trained checkpoint, ``<base>/<name>/best_model.pth``."""
        return _join(base_url or self.checkpoint_base_url, f"{self.name}/best_model.pth")

    @property
    def source_channels(self) -> tuple[str, ...]:
        """Source-channel tokens with their own statistics (empty: one set for all files)."""
        return () if ALL_CHANNELS in self.stats else tuple(sorted(self.stats))

    def normalizer(self, channel: str | None = None) -> Normalizer:
        """The fixed normaliser of the published model (meanstd: offset = mean, scale = std).

        Args:
            channel: source-channel token for presets with per-channel statistics (zebrafish:
                'ch0', 'ch1' or 'ch2'); must be None otherwise.
        """
        if not self.source_channels:
            if channel is not None:
                raise ValueError(f"dataset {self.name!r} has one set of statistics for all files; "
                                 f"do not pass a channel (got {channel!r})")
            return self.stats[ALL_CHANNELS].normalizer()
        if channel not in self.stats:
            raise ValueError(f"dataset {self.name!r} has statistics per source channel: pass one "
                             f"of {', '.join(self.source_channels)} (got {channel!r})")
        return self.stats[channel].normalizer()

    @property
    def tile_overlap(self) -> int:
        """Tile overlap equivalent to the published "keep the central part" stitching.

        The paper moved its tiles by `tile_keep` and kept each tile's centre, so every output
        pixel had at least (tile_size − tile_keep) / 2 px of context. Overlapping tiles by
        tile_size − tile_keep (= tile_size / 2 for every published dataset) gives the same stride
        and context; the linear blending ramp gives tile borders almost no weight.
        """
        return self.tile_size - self.tile_keep


def _join(base: str, relative: str) -> str:
    return base.rstrip("/") + "/" + relative


def _paper_preset(name: str, sha256: str, checkpoint_sha256: str,
                  stats: dict[str, NormStats], test_crop: int = 0) -> DatasetPreset:
    """One of the four 128-px datasets with the paper's pre-cropped folders."""
    return DatasetPreset(
        name=name, sha256=sha256, checkpoint_sha256=checkpoint_sha256, patch_size=128,
        tile_size=128, tile_keep=64, channel_mult=(1, 1, 2, 3, 4), stats=stats,
        test_crop=test_crop,
        folders=SplitFolders(train="train_crop", val="val_crop", test="test",
                             fid_reference="train_crops_fid", others=("val",)))


def _one(means: tuple[float, float], stds: tuple[float, float]) -> dict[str, NormStats]:
    return {ALL_CHANNELS: NormStats(means=means, stds=stds)}


#: The published datasets by name; :func:`register_preset` adds mirrors or new datasets.
PRESETS: dict[str, DatasetPreset] = {p.name: p for p in (
    _paper_preset(
        "zebrafish", "4a5e74dd0db583e3f082516cac17cd87f91c3df2327665a8a8f5bb295bc2ed87",
        "9e3bdfcdce89ed7d93d8cbc189e00d05d44c2b35c03934e1235ffe7104684cb4",
        {"ch0": NormStats(means=(87.74069, 176.03), stds=(51.070114, 39.342876)),
         "ch1": NormStats(means=(53.154064, 155.55043), stds=(30.28169, 23.21549)),
         "ch2": NormStats(means=(62.870373, 162.67065), stds=(32.791805, 27.638577))}),
    _paper_preset(
        "organoids1", "96093963ba26a5f9525e7024db84e35e143983f025e58206318a76672114aad7",
        "0757e308aff6f9fe3ed619a3ce190ab7210e9ed2fdfb002c2ef47752d126e0b6",
        _one((493.80344, 1325.1595), (311.96014, 155.96614))),
    _paper_preset(
        "organoids2", "6a72eac8aaf9a92f23c5ca98a6f8b6129bccee7690beb6c00e309c575a9da544",
        "329621425efcdc37063701daf3d2b7ea26f006557e3a57a08d17258d22a874d6",
        _one((2480.7273, 7911.6943), (2576.4062, 6652.056))),
    _paper_preset(
        "microtubule", "15c682afaab73e7086d36230a68119f04185eceb0a48336f0097c3e7b4ad53d9",
        "20344df5748f3eb36294d80bed67be52a37c095d5d7138d8ec16dceca7a2875a",
        _one((50.924667, 145.08662), (31.688, 27.819897)), test_crop=56),
    DatasetPreset(
        name="neuron", sha256="3930eb8faab6968c93644bf4f627025879880e0d17bd5dc572cbcad1257c6b36",
        checkpoint_sha256="2158fe4df870540885d3691cb3ec41b6db5482786106a5f03f24aedfead302e9",
        patch_size=64, tile_size=64, tile_keep=32, channel_mult=(1, 2, 3, 4),
        stats=_one((37881.363, 101.10135), (116733.914, 2.7681978)),
        folders=SplitFolders(train="train", val="val", test="test", fid_reference="train")),
)}


def dataset_names() -> list[str]:
    """Names accepted by :func:`get_preset`, :func:`download_dataset` and the CLI."""
    return sorted(PRESETS)


def get_preset(name: str) -> DatasetPreset:
    """The preset registered under `name`.

    Raises:
        UnknownDatasetError: the name is unknown (the message lists the valid names).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}; expected one of "
                                  f"{', '.join(dataset_names())}") from None


def register_preset(preset: DatasetPreset, *, replace: bool = False) -> DatasetPreset:
    """Add a dataset (e.g. a private one, or a mirror with its own checksums) to the registry."""
    if preset.name in PRESETS and not replace:
        raise ValueError(f"dataset {preset.name!r} is already registered; pass replace=True to "
                         f"override it")
    PRESETS[preset.name] = preset
    return preset


def preset_config(name: str, root: str | Path | None = None) -> ModelConfig:
    """A :class:`ModelConfig` with the published per-dataset defaults.

    Patch size, the torchcfm-equivalent network (64 vs 128 px), the inference tiles (see
    :attr:`DatasetPreset.tile_overlap`) and z-score normalisation. With `root` (the folder that
    :func:`download_dataset` extracted into) the training and validation folders are set too.
    """
    preset = get_preset(name)
    data: dict[str, object] = {"patch_size": preset.patch_size, "normalization": "meanstd",
                               "layout": "paper"}
    if root is not None:
        base = Path(root) / preset.name
        data.update(train_dir=str(base / preset.folders.train),
                    val_dir=str(base / preset.folders.val))
    network = network_config_from_torchcfm(preset.patch_size, preset.channel_mult)
    return ModelConfig.from_dict({
        "method": "hazematching",
        "in_channels": 1,
        "data": data,
        "network": network.model_dump(mode="json"),
        "training": {"lr": 1e-4},  # the paper's
        "sampling": {"tile_size": preset.tile_size, "tile_overlap": preset.tile_overlap},
    }, source=f"preset {preset.name!r}")


def source_channel_of(filename: str | Path, preset: DatasetPreset) -> str | None:
    """The source-channel token (e.g. 'ch1') in a file name, for presets with per-channel stats.

    Returns None for presets with one set of statistics.

    Raises:
        ValueError: the name holds no token, or more than one different token.
    """
    if not preset.source_channels:
        return None
    name = Path(filename).name
    # A token must not be glued to letters on its left ('batch1' is no 'ch1') nor to digits on
    # its right ('ch10' is no 'ch1').
    found = {c for c in preset.source_channels if _has_token(name, c)}
    if len(found) != 1:
        raise ValueError(f"{name}: cannot tell the source channel of this {preset.name} file: "
                         f"expected exactly one of {', '.join(preset.source_channels)} in its "
                         f"name, found {sorted(found) or 'none'}")
    return found.pop()


def _has_token(name: str, token: str) -> bool:
    start = name.find(token)
    while start >= 0:
        end = start + len(token)
        if (start == 0 or not name[start - 1].isalpha()) and \
                (end == len(name) or not name[end].isdigit()):
            return True
        start = name.find(token, start + 1)
    return False


def crop_test_image(image: np.ndarray, preset: DatasetPreset, axes: str = "YX") -> np.ndarray:
    """Remove ``preset.test_crop`` px from each side of Y and X, as the paper did for microtubule.

    Apply it to target and input alike before prediction and evaluation; a view is returned.

    Args:
        image: any array whose axes string `axes` contains Y and X (e.g. 'YX', 'CYX').
    """
    n = preset.test_crop
    if n == 0:
        return image
    axes = axes.upper()
    if len(axes) != image.ndim or "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes {axes!r} do not describe an image of shape {image.shape}")
    index: list[slice] = [slice(None)] * image.ndim
    for ax in "YX":
        size = image.shape[axes.index(ax)]
        if size <= 2 * n:
            raise ValueError(f"the {preset.name} test crop removes {n} px per side, but the image "
                             f"is only {size} px along {ax} (shape {image.shape})")
        index[axes.index(ax)] = slice(n, size - n)
    return image[tuple(index)]


def download_dataset(name: str, root: str | Path, *, base_url: str | None = None,
                     cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Download (checksummed, cached, resumable) and extract a dataset to ``root/<name>/``.

    The archive is extracted into a temporary folder next to ``root/<name>/``, checked for the
    expected folders and only then renamed, so a partial dataset never looks complete. An
    existing ``root/<name>/`` with every expected folder is returned as is (no request).

    Args:
        name: a registered dataset (:func:`dataset_names`).
        root: parent folder of the dataset.
        base_url: replaces the published data address (mirrors, tests).
        cache_dir: where the archive is kept (default :func:`resolve_cache_dir`).
        progress: show a download progress bar.

    Returns:
        ``root/<name>``.

    Raises:
        UnknownDatasetError, DownloadError, ChecksumError, DatasetError.
    """
    preset = get_preset(name)
    root = Path(root).expanduser()
    target = root / preset.name
    if target.exists():
        missing = _missing_folders(target, preset)
        if not missing:
            return target
        raise DatasetError(f"{target} exists but lacks {', '.join(missing)}; it is not the "
                           f"{preset.name} dataset. Move or delete it and run again")
    archive = fetch(preset.url(base_url), resolve_cache_dir(cache_dir) / "data" /
                    f"{preset.name}.zip", preset.sha256, progress=progress)
    root.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(root, f".{preset.name}.", ".partial")
    try:
        _extract(archive, staging, root)
        content = _dataset_folder(staging, preset)
        try:
            content.rename(target)
        except OSError as err:
            if target.exists():
                raise DatasetError(f"{target} appeared while extracting (another download?); "
                                   f"remove one of them and run again") from None
            raise DatasetError(f"cannot move the extracted dataset to {target}: {err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _missing_folders(folder: Path, preset: DatasetPreset) -> list[str]:
    return [f"{d}/" for d in preset.folders.required if not (folder / d).is_dir()]


def _extract(archive: Path, staging: Path, root: Path) -> None:
    """Unzip `archive` into `staging`, failing early and clearly when the disk is too small."""
    try:
        with zipfile.ZipFile(archive) as zf:
            needed = sum(info.file_size for info in zf.infolist())
            if shutil.disk_usage(root).free < needed:
                raise DatasetError(f"cannot extract {archive}: " + disk_full_message(root, needed))
            zf.extractall(staging)  # zipfile drops absolute paths and '..' from member names
    except zipfile.BadZipFile as err:
        raise DatasetError(f"{archive}: not a valid zip archive ({err}) although its SHA-256 "
                           f"matched; report this to the dataset maintainers") from None
    except OSError as err:
        if err.errno == errno.ENOSPC:  # the size check above raced with other writers
            raise DatasetError(f"cannot extract {archive}: " + disk_full_message(root, None)) \
                from None
        raise


def _dataset_folder(staging: Path, preset: DatasetPreset) -> Path:
    """The extracted folder holding the expected sub-folders (archives may wrap them in one)."""
    if not _missing_folders(staging, preset):
        return staging
    entries = [p for p in staging.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not _missing_folders(entries[0], preset):
        return entries[0]
    raise DatasetError(f"the {preset.name} archive lacks "
                       f"{', '.join(_missing_folders(staging, preset))} (found "
                       f"{', '.join(sorted(p.name for p in entries)) or 'nothing'}); the archive "
                       f"does not have the expected layout")
