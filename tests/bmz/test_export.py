"""Export to a BMZ package: bioimageio.core's own model test, offline and without hazematching
installed; the package's outputs against Model.predict; what the package says; bad input."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from hazematching import Model
from hazematching.bmz import BMZExport, UncalibratedExportWarning, export_bmz
from hazematching.bmz.export import ARCHITECTURE_FILE, example_input, network_kwargs

# Runs bioimageio.core's model test in a fresh interpreter where `import hazematching` fails and
# every socket connection or name look-up is refused and recorded.
CORE_TEST = """
import json, socket, sys
from pathlib import Path
sys.modules["hazematching"] = None
attempts = []
def refuse(kind):
    def blocked(*args, **kwargs):
        attempts.append(f"{kind} {args[1] if kind == 'connect' else args[0]}")
        raise OSError("offline")
    return blocked
socket.getaddrinfo = refuse("resolve")
socket.socket.connect = refuse("connect")
import torch
torch.set_num_threads(2)
from bioimageio.core import test_model
results = {}
for path in sys.argv[1:]:
    summary = test_model(Path(path))
    results[path] = {"status": summary.status,
                     "failed": [d.name + ": " + "; ".join(e.msg for e in d.errors)
                                for d in summary.details if d.status != "passed"],
                     "tests": [d.name for d in summary.details]}
print(json.dumps({"results": results, "attempts": attempts}))
"""


@pytest.mark.slow
def test_packages_pass_bioimageio_core_test_offline_without_hazematching(package,
                                                                        regression_package):
    proc = subprocess.run([sys.executable, "-c", CORE_TEST, str(package),
                           str(regression_package)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    for path in (package, regression_package):
        result = report["results"][str(path)]
        assert result["status"] == "passed" and result["failed"] == [], result
        assert any("Reproduce test outputs" in t for t in result["tests"])
        assert sum("batch_size: 2" in t for t in result["tests"]) == 3  # sizes 32, 34, 36


def test_package_reproduces_model_predict(trained, package, network_attempts):
    """bioimageio.core's pipeline (pre-processing, network, calibrated post-processing) on a
    tile the export never saw gives what hazematching itself predicts. (Without the padding by
    the halo that core adds around a whole image, which changes what the network sees.)"""
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import create_sample_for_model
    from bioimageio.spec import load_model_description

    image = np.random.default_rng(3).uniform(250, 900, (32, 32)).astype(np.float32)
    with create_prediction_pipeline(load_model_description(package)) as pipeline:
        sample = pipeline.predict_sample_without_blocking(
            create_sample_for_model(pipeline.model_descr, inputs=image[None, None]),
            skip_input_padding=True, skip_output_cropping=True)
    ours = trained.predict(image, n_samples=2, device="cpu")
    for key, expected in (("mmse", ours.mmse), ("std", ours.std)):
        got = sample.members[key].data.to_numpy()
        assert got.shape == (1, 1, 32, 32)
        np.testing.assert_allclose(got[0, 0], expected, rtol=1e-4, atol=1e-3)
    assert ours.std.std() > 0 and trained.calibration is not None
    assert network_attempts == []


def test_package_describes_the_model(trained, package, files):
    d = files(package).rdf
    assert d["license"] == "MIT" and d["type"] == "model"
    assert d["cite"][0]["doi"] == "10.48550/arXiv.2506.22397"
    assert "Guided Conditional Flow Matching" in d["cite"][0]["text"]
    assert [a["name"] for a in d["authors"]] == ["Anirban Ray", "Ashesh", "Florian Jug"]
    assert [o["id"] for o in d["outputs"]] == ["mmse", "std"]
    assert "calibrated" in d["outputs"][1]["description"]
    # Pre-processing is the model's own normalisation, post-processing its inverse; the
    # network applies the calibration (the std's post-processing only scales to target units).
    norm, cal = trained.normalizer, trained.calibration
    pre = [p for p in d["inputs"][0]["preprocessing"] if p["id"] == "scale_linear"]
    assert pre[0]["kwargs"] == pytest.approx({"gain": 1 / norm.inputs[0].scale,
                                              "offset": -norm.inputs[0].offset
                                              / norm.inputs[0].scale})
    std_post = [p for p in d["outputs"][1]["postprocessing"] if p["id"] != "ensure_dtype"]
    assert std_post == [{"id": "scale_linear", "kwargs": pytest.approx(
        {"gain": norm.target.scale})}]
    assert cal.kind == "monotone"  # the default calibrator, which only the network can apply
    # The network runs the model's own sampling configuration (n_samples as asked).
    s = trained.config.sampling
    kwargs = d["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]
    assert {k: kwargs[k] for k in ("solver", "n_time_points", "schedule", "mmse")} == {
        "solver": s.solver, "n_time_points": s.n_time_points, "schedule": s.schedule,
        "mmse": s.mmse}
    assert kwargs["n_samples"] == 2
    assert d["config"]["hazematching"]["calibration"] == cal.to_dict()
    readme = files(package).member(d["documentation"]["source"]).decode()
    assert "calibrated on validation data" in readme and "## Validation" in readme
    assert files(package).npy("test_input.npy").shape == (1, 1, 32, 32)
    cover = imread(io.BytesIO(files(package).member(d["covers"][0]["source"])))
    assert cover.shape[1] == 2 * cover.shape[0]


def test_architecture_source_is_self_contained(package, files):
    tree = ast.parse(files(package).member(ARCHITECTURE_FILE).decode())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom)}
    assert imported == {"__future__", "collections", "dataclasses", "math", "numpy", "pydantic",
                        "torch", "typing"}
    defined = {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
    assert {"BMZNetwork", "UNet", "NetworkConfig", "NoiseField", "euler", "time_grid"} <= defined


def test_uncalibrated_model_warns_and_the_package_says_so(trained, tmp_path, files,
                                                           network_attempts):
    uncalibrated = Model(trained.config, method=trained.method, normalizer=trained.normalizer)
    with pytest.warns(UncalibratedExportWarning, match="not calibrated"):
        result = export_bmz(uncalibrated, tmp_path / "u.zip")  # simulated test input
    assert result.outputs == ("mmse", "std") and "not calibrated" in result.notes[0]
    d = files(result.path).rdf
    assert d["outputs"][1]["description"].endswith("NOT calibrated")
    assert "not calibrated" in files(result.path).member("README.md").decode()
    # The simulated input is matched to the training statistics of the model's input.
    block = files(result.path).npy("test_input.npy")
    stats = trained.normalizer.inputs[0]
    assert block.mean() == pytest.approx(stats.offset, rel=1e-3)
    assert block.std() == pytest.approx(stats.scale, rel=1e-3)
    assert network_attempts == []


def test_deterministic_model_exports_the_prediction_only(regression, regression_package, files,
                                                          widefield):
    d = files(regression_package).rdf
    assert [o["id"] for o in d["outputs"]] == ["mmse"]
    readme = files(regression_package).member("README.md").decode()
    assert "deterministic" in readme and "one output" in readme
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no calibration warning for a deterministic method
        result = export_bmz(regression, regression_package, image=widefield, overwrite=True)
    assert isinstance(result, BMZExport) and result.outputs == ("mmse",)


def test_network_kwargs_follow_the_sampling_config(trained):
    model = Model(trained.config, method=trained.method, normalizer=trained.normalizer)
    model.reconfigure({"sampling.solver": "heun", "sampling.n_time_points": 5,
                       "sampling.schedule": "uniform", "sampling.mmse": "samples",
                       "sampling.n_samples": 3, "sampling.seed": None})
    kw = network_kwargs(model)
    assert (kw["solver"], kw["n_time_points"], kw["schedule"], kw["mmse"], kw["n_samples"],
            kw["seed"]) == ("heun", 5, "uniform", "samples", 3, 0)


@pytest.mark.parametrize("case,match", [
    ("method", ("BMZ export supports the methods hazematching, regression; this model uses "
                "'test-noisy'")),
    ("untrained", "not trained"),
    ("one_sample", "at least 2 posterior samples"),
    ("small_image", "at least the model's tile size 32×32"),
    ("channels", "has 2 channel\\(s\\), the model expects 1"),
    ("exists", "exists; pass overwrite=True"),
    ("name", "the BMZ description would be invalid: name: .*at least 5 items"),
])
def test_export_refuses(case, match, trained, tmp_path, widefield, config):
    out = tmp_path / "p.zip"
    model, kwargs = trained, {"image": widefield}
    if case == "method":
        model = Model(config(method="test-noisy"), normalizer=trained.normalizer)
    elif case == "untrained":
        model = Model(trained.config)
    elif case == "one_sample":
        kwargs["n_samples"] = 1
    elif case == "small_image":
        kwargs["image"] = widefield[:20]
    elif case == "channels":
        kwargs |= {"image": np.stack([widefield, widefield]), "axes": "CYX"}
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "name":
        kwargs["name"] = "HM"
    with pytest.raises((ValueError, FileExistsError), match=match):
        export_bmz(model, out, **kwargs)
    assert out.read_bytes() == b"keep me" if case == "exists" else not out.exists()
    assert list(tmp_path.iterdir()) == ([out] if case == "exists" else [])


def test_example_input_takes_the_central_tile_of_the_chosen_channel(trained):
    cyx = np.stack([np.zeros((40, 40)), np.arange(1600.0).reshape(40, 40)])
    block = example_input(trained, cyx, "CYX", channels=[1])
    assert block.shape == (1, 1, 32, 32) and block.dtype == np.float32
    assert block[0, 0, 0, 0] == 4 * 40 + 4
    with pytest.raises(ValueError, match="channels \\[2\\] do not exist"):
        example_input(trained, cyx, "CYX", channels=[2])


def test_export_accepts_a_model_directory(trained, tmp_path, files, widefield):
    result = export_bmz(Path(trained.path), tmp_path / "d.zip", image=widefield, n_samples=2)
    meta = files(result.path).rdf["config"]["hazematching"]
    assert meta["normalization"] == trained.normalizer.to_dict()
    assert meta["calibration"] == trained.calibration.to_dict()
