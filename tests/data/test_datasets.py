"""Tests for hazematching.data.datasets: presets, configs, and download + extraction over HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import PAPER_FOLDERS, StaticServer, paper_zip, sha256_of, use_preset

from hazematching.data import datasets
from hazematching.data.datasets import (
    DatasetError,
    DatasetPreset,
    NormStats,
    SplitFolders,
    UnknownDatasetError,
    crop_test_image,
    download_dataset,
    get_preset,
    preset_config,
    register_preset,
    source_channel_of,
)
from hazematching.data.download import ChecksumError
from hazematching.data.pairs import load_pairs
from hazematching.nets.convert import network_config_from_torchcfm

pytestmark = pytest.mark.timeout(60)


def tiny_preset(name: str, archive: bytes, **changes: object) -> DatasetPreset:
    """A 128-px paper-style preset whose archive checksum is that of `archive`."""
    fields = dict(name=name, sha256=sha256_of(archive), patch_size=128,
                  tile_size=128, tile_keep=64, channel_mult=(1, 1, 2, 3, 4),
                  stats={"all": NormStats(means=(10.0, 20.0), stds=(2.0, 4.0))},
                  folders=SplitFolders(train="train_crop", val="val_crop", test="test",
                                       fid_reference="train_crops_fid", others=("val",)),
                  data_base_url="http://127.0.0.1:9/unreachable/")
    fields.update(changes)
    return DatasetPreset(**fields)


def test_download_and_extract(static_server: StaticServer, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    archive = paper_zip()
    static_server.put("/mirror/tiny.zip", archive)
    use_preset(monkeypatch, tiny_preset("tiny", archive))
    root = tmp_path / "data"
    path = download_dataset("tiny", root, base_url=static_server.url + "/mirror/",
                            cache_dir=tmp_path / "cache", progress=False)
    assert path == root / "tiny"
    assert sorted(p.name for p in path.iterdir()) == sorted(PAPER_FOLDERS)
    assert sorted(p.name for p in root.iterdir()) == ["tiny"]  # no staging folder left
    pairs = load_pairs(path / "train_crop")
    assert pairs.targets[0].shape == (1, 16, 16) and pairs.inputs[0].shape == (1, 1, 16, 16)
    assert (tmp_path / "cache" / "data" / "tiny.zip").read_bytes() == archive

    # Already extracted: returned as is, without a request.
    assert download_dataset("tiny", root, base_url=static_server.url + "/mirror/",
                            cache_dir=tmp_path / "cache", progress=False) == path
    assert len(static_server.requests) == 1


def test_archive_with_a_top_level_folder(static_server: StaticServer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    archive = paper_zip(wrap="tiny")
    static_server.put("/tiny.zip", archive)
    use_preset(monkeypatch, tiny_preset("tiny", archive, data_base_url=static_server.url))
    path = download_dataset("tiny", tmp_path, cache_dir=tmp_path / "cache", progress=False)
    assert (path / "test" / "sample.tif").is_file()


def test_wrong_checksum_leaves_nothing_that_looks_complete(
        static_server: StaticServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    static_server.put("/tiny.zip", paper_zip())
    use_preset(monkeypatch, tiny_preset("tiny", b"another archive"))
    root, cache = tmp_path / "data", tmp_path / "cache"
    with pytest.raises(ChecksumError):
        download_dataset("tiny", root, base_url=static_server.url, cache_dir=cache,
                         progress=False)
    assert not (root / "tiny").exists()
    assert list((cache / "data").iterdir()) == []


def test_archive_without_expected_folders_is_rejected(
        static_server: StaticServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = paper_zip(folders=("train_crop", "val"))
    static_server.put("/tiny.zip", archive)
    use_preset(monkeypatch, tiny_preset("tiny", archive))
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match="val_crop/.*test/"):
        download_dataset("tiny", root, base_url=static_server.url, cache_dir=tmp_path / "c",
                         progress=False)
    assert list(root.iterdir()) == []


def test_existing_unrelated_folder_is_not_touched(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    use_preset(monkeypatch, tiny_preset("tiny", b"x"))
    (tmp_path / "tiny" / "mine").mkdir(parents=True)
    with pytest.raises(DatasetError, match="Move or delete it"):
        download_dataset("tiny", tmp_path, progress=False)
    assert (tmp_path / "tiny" / "mine").is_dir()


def test_unknown_dataset_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownDatasetError, match="organoids1, organoids2"):
        download_dataset("organoids3", tmp_path, progress=False)


def test_register_preset_refuses_silent_replacement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "PRESETS", dict(datasets.PRESETS))
    preset = tiny_preset("organoids1", b"x")
    with pytest.raises(ValueError, match="already registered"):
        register_preset(preset)
    assert register_preset(preset, replace=True) is get_preset("organoids1")


def test_published_presets() -> None:
    assert datasets.dataset_names() == ["microtubule", "neuron", "organoids1", "organoids2",
                                        "zebrafish"]
    org = get_preset("organoids1")
    assert org.url() == "https://download.fht.org/jug/hazematching/data/organoids1.zip"
    assert org.checkpoint_url() == ("https://download.fht.org/jug/hazematching/checkpoints/"
                                    "organoids1/best_model.pth")
    assert org.url("http://mirror/x/") == "http://mirror/x/organoids1.zip"
    assert org.sha256.startswith("96093963") and org.checkpoint_sha256.startswith("0757e308")
    assert get_preset("microtubule").test_crop == 56
    assert get_preset("zebrafish").source_channels == ("ch0", "ch1", "ch2")
    neuron = get_preset("neuron")
    assert (neuron.patch_size, neuron.tile_size, neuron.tile_keep) == (64, 64, 32)
    assert neuron.folders.required == ("train", "val", "test")
    assert org.folders.required == ("train_crop", "val_crop", "test", "train_crops_fid", "val")


@pytest.mark.parametrize(("name", "size", "mult", "overlap"), [
    ("organoids2", 128, (1, 1, 2, 3, 4), 64), ("neuron", 64, (1, 2, 3, 4), 32)])
def test_preset_config(name: str, size: int, mult: tuple[int, ...], overlap: int) -> None:
    config = preset_config(name, root="/data")
    assert config.method == "hazematching" and config.data.patch_size == size
    assert config.network == network_config_from_torchcfm(size, mult)
    assert (config.sampling.tile_size, config.sampling.tile_overlap) == (size, overlap)
    assert config.training.lr == 1e-4  # the paper's, not the package default
    folders = get_preset(name).folders
    assert config.data.train_dir == Path("/data", name, folders.train)
    assert config.data.val_dir == Path("/data", name, folders.val)


def test_normalizer_uses_fixed_published_stats() -> None:
    norm = get_preset("microtubule").normalizer()
    assert norm.kind == "meanstd"
    assert (norm.target.offset, norm.target.scale) == (50.924667, 31.688)
    assert [(s.offset, s.scale) for s in norm.inputs] == [(145.08662, 27.819897)]
    zebra = get_preset("zebrafish").normalizer("ch2")
    assert (zebra.target.offset, zebra.inputs[0].scale) == (62.870373, 27.638577)
    with pytest.raises(ValueError, match="ch0, ch1, ch2"):
        get_preset("zebrafish").normalizer()
    with pytest.raises(ValueError, match="one set of statistics"):
        get_preset("microtubule").normalizer("ch0")


def test_source_channel_token() -> None:
    zebra = get_preset("zebrafish")
    assert source_channel_of("fish3_ch1_t004.tif", zebra) == "ch1"
    assert source_channel_of("batch1_ch0.tif", zebra) == "ch0"  # 'batch1' holds no token
    assert source_channel_of("embryo2ch2.tif", zebra) == "ch2"
    for bad in ("fish.tif", "fish_ch0_ch1.tif", "fish_ch10.tif"):
        with pytest.raises(ValueError, match="source channel"):
            source_channel_of(bad, zebra)
    assert source_channel_of("anything.tif", get_preset("organoids1")) is None


def test_microtubule_test_crop() -> None:
    mt = get_preset("microtubule")
    cyx = np.arange(2 * 200 * 180).reshape(2, 200, 180)
    cropped = crop_test_image(cyx, mt, "CYX")
    np.testing.assert_array_equal(cropped, cyx[:, 56:144, 56:124])
    plane = cyx[0]
    assert crop_test_image(plane, get_preset("organoids1")) is plane
    with pytest.raises(ValueError, match="only 100 px along Y"):
        crop_test_image(np.zeros((100, 200)), mt)
    with pytest.raises(ValueError, match="do not describe"):
        crop_test_image(cyx, mt, "YX")


def test_preset_validation() -> None:
    with pytest.raises(ValueError, match="tile_keep"):
        tiny_preset("bad", b"x", tile_keep=63)
    with pytest.raises(ValueError, match="cannot be combined"):
        tiny_preset("bad", b"x", stats={"all": NormStats(means=(0, 0), stds=(1, 1)),
                                        "ch0": NormStats(means=(0, 0), stds=(1, 1))})
    with pytest.raises(ValueError, match="must be > 0"):
        NormStats(means=(0, 0), stds=(1, 0))
