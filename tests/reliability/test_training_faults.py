"""Training killed with SIGKILL at several points, a second trainer on the same directory, and
bad checkpoints on resume: the same command always finishes the job or says what to do."""

from __future__ import annotations

import torch
from helpers import make_pairs, write_paper_layout
from reliability.processes import CliProcess
from reliability.support import (
    assert_loads_and_predicts,
    config_file,
    logged_val_epochs,
    with_patches,
)
from typer.testing import CliRunner

from hazematching.cli import app
from hazematching.training import read_checkpoint

runner = CliRunner()


def _dataset(tmp_path):
    root = tmp_path / "data"
    write_paper_layout(root / "train", make_pairs(3, seed=1))
    write_paper_layout(root / "val", make_pairs(2, seed=2))
    return root


def _train(tmp_path, **training):
    cfg = config_file(tmp_path, **training)
    return ["train", str(_dataset(tmp_path)), "--out", str(tmp_path / "model"), "--config",
            str(cfg)], tmp_path / "model", cfg


def test_kill_in_first_epoch_and_a_second_trainer(tmp_path):
    args, out, cfg = _train(tmp_path, epochs=1)
    with_patches(cfg, 32)
    first = CliProcess(args, tmp_path / "first.log")
    first.wait_for(lambda: (out / "logs").exists())  # training has started
    first.pause()  # stopped in its first epoch, holding the model directory's lock
    loser = runner.invoke(app, args)
    assert loser.exit_code == 2, loser.output
    assert "is in use by another hazematching process" in loser.output
    assert "Traceback" not in loser.output
    first.kill()
    assert first.exitcode == -9
    assert not (out / "checkpoints" / "last.ckpt").exists()  # killed in the first epoch
    assert not (out / "model.json").exists()  # nothing that looks like a finished model
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert_loads_and_predicts(out)


def test_kill_mid_run_loses_at_most_the_epoch_in_progress(tmp_path):
    args, out, cfg = _train(tmp_path, epochs=4)
    with_patches(cfg, 16)
    run = CliProcess(args, tmp_path / "run.log")
    last = out / "checkpoints" / "last.ckpt"
    run.wait_for(last.exists)
    run.kill()
    assert run.exitcode == -9 and not (out / "model.json").exists()
    done = read_checkpoint(last)["epoch"]  # the last finished epoch (0-based)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    *_, resumed = logged_val_epochs(out)
    assert resumed == list(range(done + 1, 4))  # nothing finished was trained again
    assert read_checkpoint(last)["global_step"] == 16
    assert_loads_and_predicts(out)


def test_kill_while_writing_a_checkpoint(tmp_path):
    args, out, cfg = _train(tmp_path, epochs=3)
    with_patches(cfg, 16)
    run = CliProcess(args, tmp_path / "run.log", fault=("last.ckpt", 2))
    assert run.wait() == -9  # killed half-way through writing the epoch-1 checkpoint
    checkpoints = out / "checkpoints"
    assert read_checkpoint(checkpoints / "last.ckpt")["epoch"] == 0  # the previous one, intact
    assert len(list(checkpoints.glob(".last.ckpt.*.partial"))) == 1
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert not list(checkpoints.glob(".*.partial"))
    assert logged_val_epochs(out)[-1] == [1, 2]
    assert_loads_and_predicts(out)


class _Payload:
    """Unpickling this creates a file: proof that code in a checkpoint ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_resume_refuses_what_it_cannot_use(tmp_path):
    args, out, cfg = _train(tmp_path, epochs=1)
    with_patches(cfg, 8)
    assert runner.invoke(app, args).exit_code == 0
    weights = (out / "weights.safetensors").read_bytes()

    r = runner.invoke(app, [*args, "--no-resume"])  # would replace the finished model
    assert r.exit_code == 2 and "already holds a finished model; pass --overwrite" in r.output
    assert (out / "weights.safetensors").read_bytes() == weights

    r = runner.invoke(app, [*args, "--set", "network.model_channels=16"])
    assert r.exit_code == 2
    assert "network.model_channels: 8 in the checkpoint, 16 now" in r.output
    assert "--no-resume" in r.output

    last = out / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 2])
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert f"{last} is unreadable (truncated or not a checkpoint" in r.output
    assert "pass --no-resume" in r.output and "weights_only=False" not in r.output

    marker = tmp_path / "code-ran"
    torch.save({"state_dict": _Payload(marker), "epoch": 0, "global_step": 0}, last)
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "is unreadable" in r.output and not marker.exists()

    # another seed, so that the new model's weights differ (one seed gives the same weights)
    r = runner.invoke(app, [*args, "--no-resume", "--overwrite", "--set", "training.seed=1"])
    assert r.exit_code == 0, r.output
    assert (out / "weights.safetensors").read_bytes() != weights
    assert_loads_and_predicts(out)
