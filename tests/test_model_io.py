import json

import numpy as np
import pytest
from helpers import make_pairs

from hazematching import Model, load_model
from hazematching.model_io import ModelFileError, export_archive


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import TINY

    from hazematching.config import ModelConfig

    out = tmp_path_factory.mktemp("model")
    cfg = ModelConfig.from_dict(TINY).with_overrides({"training.epochs": 1})
    return Model(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out), out


def test_roundtrip_gives_identical_predictions(trained, tmp_path):
    model, out = trained
    img = make_pairs(1, size=40, seed=9).inputs[0][0, 0]
    a = model.predict(img, n_samples=2)
    b = load_model(out).predict(img, n_samples=2)
    np.testing.assert_array_equal(a.mmse, b.mmse)
    np.testing.assert_array_equal(a.std, b.std)
    c = load_model(export_archive(out, tmp_path / "model.zip")).predict(img, n_samples=2)
    np.testing.assert_array_equal(a.mmse, c.mmse)
    meta = json.loads((out / "model.json").read_text())
    assert meta["format_version"] == 1 and meta["method"] == "hazematching"
    assert "hazematching_version" in meta and meta["normalization"]["kind"] == "meanstd"


def _copy(out, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(out, dst, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    return dst


def test_corrupt_weights(trained, tmp_path):
    d = _copy(trained[1], tmp_path)
    w = d / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="weights.safetensors: corrupt or truncated"):
        load_model(d)


def test_newer_format_and_not_a_model(trained, tmp_path):
    d = _copy(trained[1], tmp_path)
    meta = json.loads((d / "model.json").read_text())
    meta["format_version"] = 99
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="newer than this installation supports"):
        load_model(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="model.json: corrupt"):
        load_model(d)
    (d / "model.json").unlink()
    with pytest.raises(ModelFileError, match="missing model.json.*interrupted"):
        load_model(d)
    f = tmp_path / "some.tif"
    f.write_bytes(b"II*\x00")
    with pytest.raises(ModelFileError, match="not a model directory"):
        load_model(f)


def test_weights_from_another_network(trained, tmp_path):
    d = _copy(trained[1], tmp_path)
    text = (d / "config.yaml").read_text().replace("model_channels: 8", "model_channels: 16")
    (d / "config.yaml").write_text(text)
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(d)
