"""Tests for hazematching.data.published: a torchcfm checkpoint served over loopback HTTP becomes a
model directory whose network reproduces torchcfm's output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    StaticServer,
    checkpoint_bytes,
    neuron_preset,
    sha256_of,
    torchcfm_unet,
    use_preset,
)
from torchcfm.models.unet.unet import UNetModel

from hazematching.api import load_model
from hazematching.data.datasets import DatasetPreset, NormStats
from hazematching.data.published import CheckpointError, import_published_model
from hazematching.model_io import META_FILE

pytestmark = pytest.mark.timeout(120)

STATS = NormStats(means=(500.0, 1300.0), stds=(300.0, 150.0))


def publish(server: StaticServer, monkeypatch: pytest.MonkeyPatch, name: str, data: bytes,
            stats: dict[str, NormStats] | None = None) -> DatasetPreset:
    """Serve `data` as <name>'s checkpoint and register a neuron-sized preset with its sha256."""
    server.put(f"/ckpt/{name}/best_model.pth", data)
    return use_preset(monkeypatch, neuron_preset(
        name, sha256="0" * 64, checkpoint_sha256=sha256_of(data), stats=stats or {"all": STATS},
        checkpoint_base_url="http://127.0.0.1:9/unreachable/"))


@pytest.fixture(scope="module")
def reference() -> tuple[UNetModel, bytes]:
    net = torchcfm_unet()
    return net, checkpoint_bytes(net.state_dict())


def test_imported_model_matches_torchcfm_and_predicts(
        static_server: StaticServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reference: tuple[UNetModel, bytes]) -> None:
    ref, data = reference
    preset = publish(static_server, monkeypatch, "tiny", data)
    out = import_published_model("tiny", tmp_path / "model", base_url=static_server.url + "/ckpt",
                                 cache_dir=tmp_path / "cache", progress=False)
    model = load_model(out)

    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 2, 64, 64, generator=gen), torch.rand(1, generator=gen)
    with torch.no_grad():
        expected, got = ref(t, x), model.method.net(t, x)
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max().item() <= 1e-5

    norm = model.normalizer
    assert norm.kind == "meanstd"
    assert (norm.target.offset, norm.target.scale) == (500.0, 300.0)
    assert [(s.offset, s.scale) for s in norm.inputs] == [(1300.0, 150.0)]
    assert (model.config.data.patch_size, model.config.sampling.tile_size,
            model.config.sampling.tile_overlap) == (64, 64, 32)
    published = json.loads((out / META_FILE).read_text())["published"]
    assert published["url"] == static_server.url + "/ckpt/tiny/best_model.pth"
    assert published["sha256"] == preset.checkpoint_sha256

    # one Euler step: CPU time is scarce
    model.reconfigure({"sampling.n_time_points": 2, "sampling.n_samples": 2})
    image = np.random.default_rng(0).uniform(1000, 1600, (60, 50)).astype(np.uint16)
    pred = model.predict(image, device="cpu")
    assert pred.mmse.shape == (60, 50) and np.isfinite(pred.mmse).all()
    assert pred.std is not None and (pred.std > 0).all()


def test_reimport_uses_cache_and_keeps_existing_model(
        static_server: StaticServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reference: tuple[UNetModel, bytes]) -> None:
    publish(static_server, monkeypatch, "tiny", reference[1])
    options = dict(base_url=static_server.url + "/ckpt", cache_dir=tmp_path / "cache",
                   progress=False)
    first = import_published_model("tiny", tmp_path / "a", **options)
    stamp = (first / META_FILE).stat().st_mtime_ns
    import_published_model("tiny", tmp_path / "a", **options)  # same import: left as is
    assert (first / META_FILE).stat().st_mtime_ns == stamp
    import_published_model("tiny", tmp_path / "b", **options)  # another folder: cached file
    assert static_server.requests == ["/ckpt/tiny/best_model.pth"]

    publish(static_server, monkeypatch, "other", reference[1])
    with pytest.raises(FileExistsError, match="different model"):
        import_published_model("other", tmp_path / "a", **options)
    import_published_model("other", tmp_path / "a", overwrite=True, **options)
    assert json.loads((first / META_FILE).read_text())["published"]["dataset"] == "other"


def test_per_channel_statistics(static_server: StaticServer, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch,
                                reference: tuple[UNetModel, bytes]) -> None:
    ch1 = NormStats(means=(50.0, 150.0), stds=(30.0, 20.0))
    publish(static_server, monkeypatch, "fish", reference[1], stats={"ch0": STATS, "ch1": ch1})
    with pytest.raises(ValueError, match="ch0, ch1"):
        import_published_model("fish", tmp_path / "m", base_url=static_server.url + "/ckpt",
                               cache_dir=tmp_path / "cache", zebrafish_channel="ch7",
                               progress=False)
    assert static_server.requests == []  # the bad channel failed before any download
    out = import_published_model("fish", tmp_path / "m", base_url=static_server.url + "/ckpt",
                                 cache_dir=tmp_path / "cache", zebrafish_channel="ch1",
                                 progress=False)
    norm = load_model(out).normalizer
    assert (norm.target.offset, norm.inputs[0].scale) == (50.0, 20.0)
    assert json.loads((out / META_FILE).read_text())["published"]["source_channel"] == "ch1"


class NotATensor:
    """Pickled objects other than tensors must never be loaded."""


@pytest.mark.parametrize(("data", "match"), [
    (b"not a checkpoint at all", "not a readable PyTorch state_dict"),
    (checkpoint_bytes({"w": NotATensor()}), "not a readable PyTorch state_dict"),
    (checkpoint_bytes([torch.zeros(1)]), "expected a state_dict"),
    (checkpoint_bytes({"input_blocks.0.0.weight": torch.zeros(32, 2, 3, 3),
                       "out.2.weight": torch.zeros(1, 32, 3, 3)}), "does not hold the published"),
])
def test_bad_checkpoints_give_clear_errors(static_server: StaticServer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, data: bytes,
                                           match: str) -> None:
    publish(static_server, monkeypatch, "tiny", data)
    with pytest.raises(CheckpointError, match=match):
        import_published_model("tiny", tmp_path / "m", base_url=static_server.url + "/ckpt",
                               cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "m" / META_FILE).exists()
