"""Reading a package back: the same model, the same predictions; packages it cannot read."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from hazematching import load_model
from hazematching.bmz import import_bmz, load_bmz


def test_import_restores_the_model_exactly(trained, package, tmp_path, network_attempts):
    restored = import_bmz(package, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.config == trained.config
    assert loaded.normalizer == trained.normalizer and loaded.calibration == trained.calibration
    assert loaded.provenance["imported_from_bmz"] == package.name
    assert loaded.provenance["steps"] == trained.provenance["steps"]
    image = np.random.default_rng(4).uniform(250, 900, (50, 70)).astype(np.float32)  # 6 tiles
    ours, theirs = trained.predict(image, device="cpu"), loaded.predict(image, device="cpu")
    assert np.array_equal(ours.mmse, theirs.mmse) and np.array_equal(ours.std, theirs.std)
    assert restored.config == trained.config
    assert network_attempts == []


def test_import_does_not_replace_a_model(package, tmp_path):
    import_bmz(package, tmp_path / "m")
    before = (tmp_path / "m" / "model.json").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a model"):
        import_bmz(package, tmp_path / "m")
    assert (tmp_path / "m" / "model.json").read_bytes() == before
    import_bmz(package, tmp_path / "m", overwrite=True)


def _repack(package, out, edit):
    """`package` with its rdf.yaml passed through `edit` (text → text)."""
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, edit(data.decode()).encode() if item.filename == "rdf.yaml"
                         else data)
    return out


@pytest.mark.parametrize("case,match", [
    ("missing", "no such BMZ package"),
    ("not_zip", "not a BMZ package \\(expected a .zip archive\\)"),
    ("no_rdf", "not a valid BMZ model package"),
    ("foreign", "not a package exported by hazematching"),
    ("newer", "format version 99 .* is newer than this installation supports"),
    ("no_weights", "weights do not fit"),
])
def test_load_refuses(case, match, package, tmp_path):
    path = tmp_path / "p.zip"
    if case == "not_zip":
        path.write_text("hello")
    elif case == "no_rdf":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("weights.pt", b"")
    elif case == "foreign":
        _repack(package, path, lambda t: t.replace("format: hazematching-bmz",
                                                   "format: something-else"))
    elif case == "newer":
        _repack(package, path, lambda t: t.replace("    format_version: 1\n",
                                                   "    format_version: 99\n"))
    elif case == "no_weights":
        _repack(package, path, lambda t: t.replace("model_channels: 8", "model_channels: 16"))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_bmz(path)
