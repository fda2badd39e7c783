"""The download and split commands of the hazematching CLI,
against a static HTTP server on 127.0.0.1; the imported model then runs through `predict`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import (
    StaticServer,
    checkpoint_bytes,
    neuron_preset,
    paper_zip,
    sha256_of,
    torchcfm_unet,
    use_preset,
)
from typer.testing import CliRunner

from hazematching.cli import app
from hazematching.data.datasets import NormStats
from hazematching.io import write_tiff

pytestmark = pytest.mark.timeout(120)

runner = CliRunner()


@pytest.fixture
def published(static_server: StaticServer, monkeypatch: pytest.MonkeyPatch,
              tmp_path: Path) -> str:
    """Serve a neuron-sized dataset archive and checkpoint as 'clitiny', and the checkpoint again
    as 'clifish' with per-channel statistics (like zebrafish); returns the base URL."""
    archive = paper_zip(("train", "val", "test"), file_name="a.tif",
                        image=np.ones((2, 16, 16), np.uint16))
    static_server.put("/data/clitiny.zip", archive)
    checkpoint = checkpoint_bytes(torchcfm_unet(random_weights=False).state_dict())
    static_server.put("/checkpoints/clitiny/best_model.pth", checkpoint)
    static_server.put("/checkpoints/clifish/best_model.pth", checkpoint)
    stats = NormStats(means=(100.0, 200.0), stds=(10.0, 20.0))
    common = dict(sha256=sha256_of(archive), checkpoint_sha256=sha256_of(checkpoint))
    use_preset(monkeypatch, neuron_preset("clitiny", stats={"all": stats}, **common))
    use_preset(monkeypatch, neuron_preset("clifish", stats={"ch0": stats, "ch1": stats}, **common))
    monkeypatch.setenv("HAZEMATCHING_CACHE", str(tmp_path / "cache"))
    return static_server.url


def test_download_dataset(published: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["download", "clitiny", "--out", str(tmp_path / "data"),
                                 "--base-url", published + "/data/"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "clitiny" / "test" / "a.tif").is_file()
    assert (tmp_path / "cache" / "data" / "clitiny.zip").is_file()  # $HAZEMATCHING_CACHE


def test_download_model_then_predict(published: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["download", "clitiny", "--model", "--out",
                                 str(tmp_path / "models"), "--base-url",
                                 published + "/checkpoints", "--cache-dir",
                                 str(tmp_path / "other-cache")])
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "models" / "clitiny"
    assert (tmp_path / "other-cache" / "checkpoints" / "clitiny" / "best_model.pth").is_file()

    image = tmp_path / "image.tif"
    write_tiff(image, np.full((40, 40), 210, np.uint16), "YX")
    result = runner.invoke(app, ["predict", str(model_dir), str(image), "--out",
                                     str(tmp_path / "pred"), "--n-samples", "2",
                                     "--n-time-points", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "image_mmse.tif").is_file()
    assert (tmp_path / "pred" / "image_std.tif").is_file()


def test_download_model_per_source_channel(published: str, tmp_path: Path) -> None:
    base = ["download", "clifish", "--model", "--base-url", published + "/checkpoints"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "all")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["clifish_ch0", "clifish_ch1"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "one"), "--channel", "ch1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["clifish_ch1"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--channel", "ch0",
                                 "--channel", "ch5"])
    assert result.exit_code == 2 and "ch0, ch1" in result.output
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["download", "nosuchset", "--out", "x"], "organoids1"),
    (["download", "organoids1", "--out", "x", "--channel", "ch0"], "--channel only applies"),
    (["download", "organoids1", "--model", "--out", "x", "--channel", "ch0"],
     "one set of statistics"),
])
def test_download_errors(args: list[str], message: str, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


def test_split(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(5):
        write_tiff(src / f"im{i}.tif", np.full((2, 32, 32), i, np.uint16), "CYX")
    out = tmp_path / "split"
    args = ["split", str(src), "--out", str(out), "--patch-size", "16", "--val-fraction",
            "0.2", "--test-fraction", "0.2", "--seed", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(list((out / "train_crop").iterdir())) == 3 * 4
    assert len(list((out / "test").iterdir())) == 1

    result = runner.invoke(app, args)  # the output exists now
    assert result.exit_code == 2 and "exists" in result.output
