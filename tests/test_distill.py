"""Distilling a really trained tiny model through the API and the command line: real training
runs (Lightning), real files, the distilled model loaded back and used for prediction."""

import hashlib

import numpy as np
import pytest
import torch
import yaml
from helpers import make_pairs
from torch.utils.data import default_collate
from typer.testing import CliRunner

from hazematching.api import Model, load_model
from hazematching.cli import app
from hazematching.config import ModelConfig
from hazematching.data.patches import FixedPatches
from hazematching.distill import distill
from hazematching.methods.distillation import FlowMapDistillation


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny HazeMatching model trained for 8 epochs of 4 steps (so that its field is no
    longer the untrained network's near-zero output), its training pairs and directory."""
    from conftest import TINY

    pairs = make_pairs(4)
    out = tmp_path_factory.mktemp("teacher")
    config = ModelConfig.from_dict(TINY).with_overrides({
        "training.epochs": 8, "training.lr": 2e-3, "data.patches_per_epoch": 16})
    Model(config).fit(pairs, out_dir=out)
    return load_model(out), pairs, out


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def _distillation_loss(net, student, teacher, pairs):
    """The distillation loss of `net` (a state dict) as `student`'s network, on fixed patches
    with fixed randomness."""
    patches = FixedPatches(pairs, teacher.normalizer, teacher.config.data.patch_size)
    target, cond = default_collate([patches[i] for i in range(len(patches))])
    probe = FlowMapDistillation(student.config, teacher.method, teacher_steps=2)
    probe.net.load_state_dict(net)
    torch.manual_seed(0)
    with torch.no_grad():
        return float(probe.eval().training_loss(target, cond))


def test_distillation_trains_a_few_step_model_and_leaves_the_teacher_alone(teacher, tmp_path):
    model, pairs, teacher_dir = teacher
    before = _digest(teacher_dir)
    out = tmp_path / "distilled"
    student = distill(teacher_dir, pairs, out_dir=out, steps=2, teacher_steps=2,
                      overrides={"training.epochs": 6, "training.lr": 2e-3})
    assert _digest(teacher_dir) == before

    opts, s = student.config.method_options, student.config.sampling
    assert opts["distilled_steps"] == 2
    assert (s.solver, s.n_time_points, s.schedule) == ("euler", 3, "uniform")
    assert student.config.training.epochs == 6
    assert student.normalizer.to_dict() == model.normalizer.to_dict()
    assert student.calibration is not None
    assert student.calibration.fitted_for["solver"] == "euler"
    assert student.calibration.fitted_for["n_time_points"] == 3
    record = student.provenance["distillation"]
    assert record["teacher"] == str(teacher_dir) and record["steps"] == 2
    assert record["teacher_sampling"]["solver"] == model.config.sampling.solver
    assert student.provenance["steps"] > 0

    # The training moved the student towards the teacher's two-step-per-interval map.
    start = _distillation_loss(model.method.net.state_dict(), student, model, pairs)
    end = _distillation_loss(student.method.net.state_dict(), student, model, pairs)
    print(f"distillation loss {start:.4f} -> {end:.4f}")
    assert end < 0.9 * start

    # Two network calls per sample, whatever the sampling settings asked for.
    calls = []
    student.method.net.register_forward_pre_hook(lambda net, args: calls.append(len(args[0])))
    with pytest.warns(UserWarning, match="distilled"):
        student.reconfigure({"sampling.solver": "midpoint", "sampling.n_time_points": 10})
    student.method.net.register_forward_pre_hook(lambda net, args: calls.append(len(args[0])))
    image = pairs.inputs[0][0, 0]
    pred = student.predict(image, "YX", n_samples=4, device="cpu")
    assert pred.mmse.shape == image.shape and np.isfinite(pred.std).all()
    tiles = 4  # 48² in 32-px tiles with an 8-px overlap: 2 × 2
    assert sum(calls) == 2 * 4 * tiles


def test_distillation_refuses_what_it_cannot_do(teacher, tmp_path):
    model, pairs, teacher_dir = teacher
    with pytest.raises(ValueError, match="holds the teacher"):
        distill(teacher_dir, pairs, out_dir=teacher_dir)
    with pytest.raises(ValueError, match="steps"):
        distill(model, pairs, out_dir=tmp_path / "d", steps=0)
    with pytest.raises(ValueError, match="fixes its sampling grid"):
        distill(model, pairs, out_dir=tmp_path / "d", overrides={"sampling.solver": "heun"})
    regression = Model(ModelConfig.from_dict({"method": "regression", "network": {
        "model_channels": 8, "channel_mult": [1, 2], "attention_downsample": [2]}}))
    with pytest.raises(ValueError, match="HazeMatching model as the teacher"):
        distill(regression, pairs, out_dir=tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_the_distill_command(teacher, tmp_path, paper_dataset):
    runner = CliRunner()
    _, _, teacher_dir = teacher
    out = tmp_path / "d"
    r = runner.invoke(app, ["distill", str(teacher_dir), str(paper_dataset), "--out", str(out),
                            "--steps", "3", "--max-steps", "2"])
    assert r.exit_code == 0, r.output
    assert "3 network calls per sample" in r.output and "calibrated on" in r.output
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method_options"]["distilled_steps"] == 3
    assert cfg["training"]["max_steps"] == 2
    again = runner.invoke(app, ["distill", str(out), str(paper_dataset), "--out",
                                str(tmp_path / "e")])
    assert again.exit_code != 0 and "already distilled" in again.output


def test_training_from_scratch_refuses_the_distilled_marker(tmp_path):
    from conftest import TINY

    cfg = ModelConfig.from_dict(TINY).with_overrides({
        "method_options.distilled_steps": 2, "sampling.solver": "euler",
        "sampling.n_time_points": 3})
    with pytest.raises(ValueError, match="made by `hazematching distill`"):
        Model(cfg).fit(make_pairs(2), out_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists()
