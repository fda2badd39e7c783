"""The shared training loop with a real Lightning Trainer: logs, checkpoints, EMA, resume, DDP."""

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_pairs

from hazematching import Model
from hazematching.model_io import load_model_files


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


def test_ema_weights_are_exported(tmp_path, tiny_config):
    out = tmp_path / "m"
    Model(tiny_config).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    key = next(k for k in ema if k.endswith("weight"))
    assert not torch.equal(ema[key], raw[key])
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
        "training": {{"epochs": 2, "batch_size": 4, "progress_bar": False, "accelerator": "cpu",
                      "devices": 2, "strategy": "ddp"}},
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
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.parent == tmp_path
                and p.name != "ddp_train.py"]
