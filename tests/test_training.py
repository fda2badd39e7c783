"""The shared training loop with a real Lightning Trainer: logs, checkpoints, EMA, resume, DDP."""

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import make_pairs
from torch.utils.data import DataLoader, TensorDataset

from hazematching import Model
from hazematching.methods import register
from hazematching.methods.regression import Regression
from hazematching.model_io import load_model_files
from hazematching.training import read_checkpoint


def _rows(out: Path) -> list[dict]:
    rows = []
    for f in sorted((out / "logs" / "csv").glob("version_*/metrics.csv")):
        rows += list(csv.DictReader(f.open()))
    return rows


def test_fit_logs_checkpoints_and_learns(tmp_path, tiny_config):
    cfg = tiny_config.with_overrides({"training.epochs": 8, "data.patches_per_epoch": 32,
                                      "training.lr": 3e-3})
    m = Model(cfg).fit(make_pairs(4), make_pairs(2, seed=5), out_dir=tmp_path / "m")
    out = tmp_path / "m"
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "model.json",
                                               "weights.safetensors", "checkpoints", "logs"}
    assert (out / "checkpoints" / "best.ckpt").exists() and (out / "checkpoints" /
                                                               "last.ckpt").exists()
    assert list((out / "logs" / "tensorboard").glob("version_0/events.*"))
    rows = _rows(out)
    train = [float(r["train_loss_step"]) for r in rows if r.get("train_loss_step")]
    val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    assert len(val) == 8 and len(train) == 64
    assert np.mean(train[-8:]) < 0.8 * np.mean(train[:8])
    assert min(val) < val[0]
    assert m.training_summary["steps"] == 64 and m.training_summary["val_loss"] == min(val)


@register
class WorseningValidation(Regression):
    """Regression whose validation loss grows with every validation batch: only the first
    validation is ever the best."""

    name = "test-worsening-validation"
    n_validated = 0

    def validation_loss(self, target, cond):
        self.n_validated += 1
        return torch.tensor(float(self.n_validated))


def test_last_checkpoint_is_the_latest_step_when_validation_gets_worse(tmp_path, tiny_config):
    cfg = tiny_config.with_overrides({"method": "test-worsening-validation",
                                      "training.epochs": 3, "data.patches_per_epoch": 8})
    Model(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=tmp_path / "m")
    checkpoints = tmp_path / "m" / "checkpoints"
    assert read_checkpoint(checkpoints / "best.ckpt")["global_step"] == 2
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 6  # 3 epochs of 2


def test_ema_weights_are_exported(tmp_path, tiny_config):
    out = tmp_path / "m"
    Model(tiny_config).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    # Weights behind the U-Net's zero-initialised layers have not moved yet after two steps
    # (their average is then exactly them); the others have, and their average lags.
    moved = [k for k in ema if not torch.equal(ema[k], raw[k])]
    assert len(moved) > len(ema) // 4
    key = moved[0]
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    exported = load_model_files(out).method.state_dict()
    assert torch.equal(exported[key.removeprefix("method.")], best[key])


def test_interrupted_training_resumes(tmp_path, tiny_config):
    out = tmp_path / "m"
    one = tiny_config.with_overrides({"training.epochs": 1, "data.patches_per_epoch": 8})
    first = Model(one).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out)
    assert first.training_summary["steps"] == 2
    (out / "model.json").unlink()  # as if the run had died before finishing
    three = one.with_overrides({"training.epochs": 3})
    again = Model(three).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out)
    assert again.training_summary["steps"] == 6 and again.training_summary["epochs"] == 3
    epochs = sorted({int(r["epoch"]) for r in _rows(out) if r.get("val_loss")})
    assert epochs == [0, 1, 2]


DDP_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    sys.path.insert(0, {tests!r})
    from helpers import make_pairs
    from hazematching import Model, ModelConfig
    cfg = ModelConfig.from_dict({{
        "data": {{"patch_size": 16, "patches_per_epoch": 16}},
        "network": {{"model_channels": 8, "channel_mult": [1, 2], "attention_downsample": [2]}},
        # Validated after every step by time (60 µs): both ranks must agree on when.
        "training": {{"epochs": 2, "batch_size": 4, "progress_bar": False, "accelerator": "cpu",
                      "devices": 2, "strategy": "ddp", "val_every_minutes": 1e-6}},
        "sampling": {{"tile_size": 16, "tile_overlap": 4}}}})
    m = Model(cfg).fit(make_pairs(4, size=32), make_pairs(2, size=32, seed=5), out_dir=sys.argv[1])
    w = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.method.parameters()))
    print("RESULT " + json.dumps({{**m.training_summary, "weights": w.hexdigest(),
                                  "wrote": m.path is not None}}), flush=True)
""")


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    by_rank = {r["global_rank"]: r for r in results}
    assert set(by_rank) == {0, 1}
    for r in results:
        assert r["world_size"] == 2 and r["steps"] == 4
        assert r["batches_per_epoch"] == 2  # 16 patches / 2 ranks / batch 4
    # gradients were synchronised: both ranks end with the same weights
    assert by_rank[0]["weights"] == by_rank[1]["weights"]
    # only rank 0 wrote the model and logs
    assert by_rank[0]["wrote"] and not by_rank[1]["wrote"]
    assert len(list((out / "logs" / "csv").glob("version_*"))) == 1
    assert _validated_steps(out) == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.parent == tmp_path
                and p.name != "ddp_train.py"]


def test_settings_are_checked_before_any_work(tiny_config):
    from hazematching.training import check_settings

    with pytest.raises(ValueError, match=r"max_steps=-5\): `max_steps` must be a non-negative "
                                         r"integer or -1"):
        check_settings(tiny_config.training.model_copy(update={"max_steps": -5}))
    with pytest.raises(ValueError, match="invalid accelerator name"):
        check_settings(tiny_config.training.model_copy(update={"accelerator": "foo"}))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"accelerator='gpu'.*No supported gpu backend"):
            check_settings(tiny_config.training.model_copy(update={"accelerator": "gpu"}))
    with pytest.raises(ValueError, match=r"max_steps=-5"):  # Model.fit checks before loading
        Model(tiny_config.with_overrides({"training.max_steps": -5})).fit(
            "/no/such/folder", out_dir="/no/such/model")


def test_checkpoints_that_cannot_be_resumed(tmp_path, tiny_config):
    from hazematching.methods import build_method
    from hazematching.training import (
        CheckpointError,
        RestorationModule,
        check_resumable,
        read_checkpoint,
    )

    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError, match=r"last.ckpt is unreadable \(truncated or not a "
                                              r"checkpoint: \w+\); pass --no-resume"):
        read_checkpoint(bad)
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="not a training checkpoint of this package"):
        read_checkpoint(bad)
    module = RestorationModule(build_method(tiny_config))
    state = {k: torch.zeros(1) for k in module.state_dict()}  # no stored config: by shapes
    with pytest.raises(CheckpointError, match=r"its weights do not fit the configured network "
                                              r"\(\d+ parameter\(s\) differ"):
        check_resumable({"state_dict": state}, module, tiny_config, bad)


def test_finished_model_is_replaced_only_with_overwrite(tmp_path, tiny_config):
    import stat

    from hazematching.training import read_checkpoint

    out = tmp_path / "m"
    one = tiny_config.with_overrides({"training.epochs": 1, "data.patches_per_epoch": 8})
    previous = os.umask(0o022)
    try:
        Model(one).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out)
    finally:
        os.umask(previous)
    written = ["config.yaml", "weights.safetensors", "model.json", "checkpoints/best.ckpt",
               "checkpoints/last.ckpt"]
    assert all(stat.S_IMODE((out / f).stat().st_mode) == 0o644 for f in written)
    stored = read_checkpoint(out / "checkpoints" / "last.ckpt")["hazematching_config"]
    assert stored["network"]["model_channels"] == 8
    weights = (out / "weights.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a finished model; pass --overwrite"):
        Model(one).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out, resume=False)
    assert (out / "weights.safetensors").read_bytes() == weights
    Model(one.with_overrides({"training.seed": 1})).fit(make_pairs(3), make_pairs(2, seed=5),
                                                        out_dir=out, resume=False, overwrite=True)
    assert (out / "weights.safetensors").read_bytes() != weights
    assert load_model_files(out).meta["epochs"] == 1


def _cadence(config, **training):
    """`config` with these training fields, None included (``with_overrides`` skips Nones)."""
    raw = config.model_dump(mode="json")
    raw["training"].update(training)
    return type(config).from_dict(raw)


def _validated_steps(out: Path) -> list[int]:
    """The optimiser steps after which a validation loss was logged (the CSV's step column
    counts the steps before the one that just finished)."""
    return [int(r["step"]) + 1 for r in _rows(out) if r.get("val_loss")]


def test_validation_every_n_steps_across_epochs_and_at_the_end(tmp_path, tiny_config):
    cfg = _cadence(tiny_config.with_overrides({"training.epochs": 4, "data.patches_per_epoch": 8}),
                   val_every_n_epochs=None, val_every_n_steps=3)  # 4 epochs of 2 steps
    m = Model(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=tmp_path / "m")
    assert _validated_steps(tmp_path / "m") == [3, 6, 8]
    assert m.training_summary["steps"] == 8 and m.training_summary["epochs"] == 4
    assert read_checkpoint(tmp_path / "m" / "checkpoints" / "last.ckpt")["global_step"] == 8


def test_default_cadence_validates_by_time_and_always_at_the_end(tmp_path, tiny_config):
    cfg = _cadence(tiny_config.with_overrides({"training.epochs": 3, "data.patches_per_epoch": 8}),
                   val_every_n_epochs=None)
    assert cfg.training.val_cadence == ("minutes", 5.0)
    Model(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=tmp_path / "a")
    assert _validated_steps(tmp_path / "a") == [6]  # 5 minutes never passed: only the end
    checkpoints = tmp_path / "a" / "checkpoints"
    assert read_checkpoint(checkpoints / "best.ckpt")["global_step"] == 6
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 6
    every_step = _cadence(cfg, val_every_minutes=1e-6)  # 60 µs: less than any step takes
    Model(every_step).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=tmp_path / "b")
    assert _validated_steps(tmp_path / "b") == [1, 2, 3, 4, 5, 6]


def test_resume_from_a_checkpoint_written_mid_epoch(tmp_path, tiny_config):
    out = tmp_path / "m"
    cfg = _cadence(tiny_config.with_overrides({"training.epochs": 3, "data.patches_per_epoch": 8}),
                   val_every_n_epochs=None, val_every_n_steps=4)
    first = Model(cfg.with_overrides({"training.max_steps": 3})).fit(
        make_pairs(3), make_pairs(2, seed=5), out_dir=out)
    assert first.training_summary["steps"] == 3  # stopped in the middle of epoch 1
    last = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert (last["global_step"], last["epoch"]) == (3, 1)
    (out / "model.json").unlink()  # as if the run had died before finishing
    again = Model(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out)
    assert again.training_summary["steps"] == 6 and again.training_summary["epochs"] == 3
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 6
    # Validated after step 3 (epoch 1), then after steps 4 (epoch 1) and 6: no step twice.
    assert [int(r["epoch"]) for r in _rows(out) if r.get("val_loss")] == [1, 1, 2]


class _Linear(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.lin(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _RecordWeights(pl.Callback):
    def __init__(self):
        self.weights = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append([p.detach().clone() for p in pl_module.parameters()])


def test_ema_is_the_warmed_up_average_of_the_weights():
    from hazematching.training import EMA

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(12, 3), torch.randn(12, 1))
    module, record = _Linear(), _RecordWeights()
    trainer = pl.Trainer(max_steps=3, callbacks=[EMA(0.2), record], accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, DataLoader(data, batch_size=4))
    w1, w2, w3 = record.weights
    # The first update copies; the n-th after it uses decay min(0.2, (1 + n) / (10 + n)).
    d2, d3 = 2 / 11, 0.2
    expected = [d3 * (d2 * a + (1 - d2) * b) + (1 - d3) * c for a, b, c in zip(w1, w2, w3)]
    assert not torch.allclose(expected[0], w3[0])
    for got, want in zip(module.parameters(), expected, strict=True):  # EMA weights at the end
        torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-7)


class _RecordLR(pl.Callback):
    """The learning rate each optimiser step ran with (set just before the step)."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def _cosine(step: int, total: int, lr: float, final: float, warmup: int) -> float:
    import math
    f = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * step / total))
    return lr * f * min(1.0, (step + 1) / warmup)


def test_cosine_schedule_with_warmup_follows_the_budget_and_survives_a_resume(tmp_path,
                                                                              tiny_config):
    cfg = _cadence(tiny_config.with_overrides(
        {"training.epochs": 100, "training.max_steps": 8, "data.patches_per_epoch": 8,
         "training.lr": 1e-3, "training.lr_schedule": "cosine",
         "training.final_lr_fraction": 0.1, "training.warmup_steps": 3}),
        val_every_n_epochs=None, val_every_n_steps=4)
    expected = [_cosine(s, 8, 1e-3, 0.1, 3) for s in range(8)]
    whole = _RecordLR()
    Model(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=tmp_path / "a",
                   callbacks=[whole])
    np.testing.assert_allclose(whole.lrs, expected, rtol=1e-12)
    assert whole.lrs[0] < whole.lrs[1] < whole.lrs[2]  # warm-up
    assert all(a > b for a, b in zip(whole.lrs[2:], whole.lrs[3:]))  # then the cosine falls

    # Stopped after 5 of the 8 steps, then resumed: the same curve, no scheduler state.
    out = tmp_path / "b"
    first, second = _RecordLR(), _RecordLR()
    Model(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out,
                   callbacks=[first, _StopAfter(5)])
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 5
    (out / "model.json").unlink()  # as if the run had died there
    Model(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out, callbacks=[second])
    np.testing.assert_allclose(first.lrs + second.lrs, expected, rtol=1e-12)


class _StopAfter(pl.Callback):
    def __init__(self, steps: int):
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def test_cosine_schedule_by_time_and_by_epochs(tiny_config):
    from hazematching.training import LearningRate
    cfg = tiny_config.training.model_copy(update={"lr_schedule": "cosine", "lr": 1.0})
    trainer = pl.Trainer(max_epochs=4, max_time={"seconds": 100}, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    sched = LearningRate(cfg)
    timer = next(c for c in trainer.callbacks if isinstance(c, pl.callbacks.Timer))
    timer.load_state_dict({"time_elapsed": {"train": 50.0}})  # as restored on a resume
    assert sched.progress(trainer, 0) == pytest.approx(0.5, abs=1e-3)  # time is furthest on
    assert sched.factor(trainer, 0) == pytest.approx(0.5, abs=2e-3)
    timer.load_state_dict({"time_elapsed": {"train": 0.0}})
    trainer.fit_loop.epoch_progress.current.completed = 3  # epoch 3 of 4
    assert sched.progress(trainer, 0) == pytest.approx(0.75, abs=1e-3)
