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


def _edit_meta(d, edit):
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps(edit(meta)))


@pytest.mark.parametrize("edit,message", [
    (lambda m: {k: v for k, v in m.items() if k != "normalization"},
     r"model.json: invalid field normalization: Field required"),
    (lambda m: {**m, "calibration": {"alpha": 1}},
     (r"model.json: invalid field calibration.a: Field required; calibration.b: Field required; "
      r"calibration.alpha: Extra inputs are not permitted")),
    (lambda m: [m], r"model.json: corrupt \(expected a JSON object, found list\)"),
    (lambda m: {**m, "calibration": {"a": 1.0, "b": 0.0, "knots": [[0.2, 0.3], [0.1, 0.4]]}},
     (r"invalid field calibration: Value error, calibration knots must be non-negative and "
      r"strictly increasing")),
    (lambda m: {**m, "normalization": {**m["normalization"], "target": {"offset": 0,
                                                                         "scale": -1}}},
     r"normalization.target.scale: Input should be greater than 0"),
    (lambda m: {**m, "method": "rcan"}, r"method 'rcan' does not match config.yaml's"),
    (lambda m: {**m, "normalization": {**m["normalization"], "inputs": [
        m["normalization"]["inputs"][0]] * 2}}, r"normalization.inputs has 2 channel\(s\)"),
])
def test_every_model_json_field_is_validated(trained, tmp_path, edit, message):
    d = _copy(trained[1], tmp_path)
    _edit_meta(d, edit)
    with pytest.raises(ModelFileError, match=message):
        load_model(d)


def test_corrupt_config_and_non_finite_weights(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy(trained[1], tmp_path)
    w = d / "weights.safetensors"
    good = w.read_bytes()
    state = load_file(str(w))
    key = next(iter(state))
    state[key][0] = float("nan")
    save_file(state, str(w))
    with pytest.raises(ModelFileError, match=f"weights.safetensors: NaN/Inf in 1 weight "
                                             f"tensor\\(s\\) \\(\\['{key}'\\]\\)"):
        load_model(d)
    w.write_bytes(good)
    (d / "config.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelFileError, match="config.yaml: unreadable"):
        load_model(d)
    (d / "config.yaml").write_text("network:\n  num_res_blocks: 1000000000\n")
    with pytest.raises(ModelFileError, match="num_res_blocks"):
        load_model(d)  # out of bounds: refused by the config's validation
    (d / "config.yaml").write_text("network:\n  model_channels: 1024\n  num_res_blocks: 16\n"
                                   "  channel_mult: [16, 16, 16, 16, 16]\n")
    with pytest.raises(ModelFileError, match="far more parameters than the"):
        load_model(d)  # in bounds, but stopped while building on the meta device: no memory


def test_corrupt_archives(trained, tmp_path):
    import zipfile

    archive = export_archive(trained[1], tmp_path / "m.zip")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="m.zip: not a model directory"):
        load_model(archive)  # no longer a zip at all
    with zipfile.ZipFile(tmp_path / "partial.zip", "w") as zf:
        zf.writestr("model.json", "{}")
    with pytest.raises(ModelFileError, match="partial.zip: not a hazematching model archive "
                                             r"\(missing config.yaml, weights.safetensors\)"):
        load_model(tmp_path / "partial.zip")
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("model.json", "config.yaml"):
            zf.writestr(name, "{}")
        zf.writestr("weights.safetensors", b"\0" * 50 * 2**20)
    with pytest.raises(ModelFileError, match="bomb.zip: declares 50 MiB of files"):
        load_model(tmp_path / "bomb.zip")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside the stored weights: the CRC check catches it
    (tmp_path / "crc.zip").write_bytes(bytes(flipped))
    with pytest.raises(ModelFileError, match="crc.zip: corrupt model archive"):
        load_model(tmp_path / "crc.zip")


def test_resaving_rewrites_only_what_changed_and_keeps_the_record(trained, tmp_path):
    from hazematching.calibration import Calibration

    d = _copy(trained[1], tmp_path)
    weights = d / "weights.safetensors"
    before = weights.stat().st_ino
    m = load_model(d)
    m.calibration = Calibration(2.0, 0.1)
    m.save(d)
    assert weights.stat().st_ino == before  # same weights: the file was not replaced
    meta = json.loads((d / "model.json").read_text())
    assert meta["calibration"] == {"a": 2.0, "b": 0.1}
    monotone = Calibration(2.0, 0.1, {"n_samples": 8}, ((0.1, 0.25), (0.2, 0.5)))
    m.calibration = monotone
    m.save(d)
    assert load_model(d).calibration == monotone
    assert meta["steps"] == trained[0].training_summary["steps"] and "val_loss" in meta
