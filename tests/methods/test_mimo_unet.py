"""MIMO-UNet baseline: multi-scale training through Model.fit, model files, the command line."""

import pytest
import torch
from typer.testing import CliRunner

from hazematching.cli import app
from hazematching.methods import build_method
from hazematching.methods.mimo_unet import frequency_l1
from hazematching.nets import MIMOUNet

TINY_MIMO = {"channels": 8, "n_res_blocks": 1}


@pytest.fixture(scope="module")
def run(train_tiny):
    # Its outputs start at the input image and move slowly: 60 steps instead of 20.
    return train_tiny("mimo_unet", {"training.epochs": 15}, **TINY_MIMO)


def test_training_lowers_the_multiscale_loss(run) -> None:
    assert isinstance(run.model.method.net, MIMOUNet)
    run.check_training_lowers_the_loss()


def test_save_load_gives_identical_deterministic_predictions(run) -> None:
    run.check_deterministic_round_trip()


def test_loss_is_content_plus_weighted_frequency_over_three_scales(method_config) -> None:
    torch.manual_seed(0)
    target, cond = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    losses = {w: build_method(method_config("mimo_unet", frequency_weight=w, **TINY_MIMO))
              for w in (0.0, 0.5)}
    losses[0.5].load_state_dict(losses[0.0].state_dict())
    outs = losses[0.0].net.forward_scales(cond)
    half = torch.nn.functional.interpolate(target, scale_factor=0.5, mode="bilinear")
    refs = [target, half, torch.nn.functional.interpolate(half, scale_factor=0.5,
                                                          mode="bilinear")]
    content = sum((o - r).abs().mean() for o, r in zip(outs, refs, strict=True))
    freq = sum(frequency_l1(o, r) for o, r in zip(outs, refs, strict=True))
    torch.testing.assert_close(losses[0.0].training_loss(target, cond), content)
    torch.testing.assert_close(losses[0.5].training_loss(target, cond), content + 0.5 * freq)


def test_frequency_loss_sees_a_phase_shift_that_l1_of_magnitudes_would_not() -> None:
    x = torch.randn(1, 1, 16, 16)
    assert frequency_l1(x, x) == 0
    assert frequency_l1(torch.roll(x, 3, dims=-1), x) > 0.1


def test_patch_size_must_fit_the_levels(method_config) -> None:
    with pytest.raises(ValueError, match=r"data.patch_size \(mimo_unet\)=34 must be divisible"):
        build_method(method_config("mimo_unet", {"data.patch_size": 34}))


def test_train_from_the_command_line(paper_dataset, tmp_path) -> None:
    res = CliRunner().invoke(app, [
        "train", str(paper_dataset), "--out", str(tmp_path / "m"), "--method", "mimo_unet",
        "--max-steps", "1", "--patch-size", "32", "--batch-size", "2",
        "--set", "method_options.channels=4", "--set", "method_options.n_res_blocks=0",
        "--set", "training.progress_bar=false", "--set", "training.accelerator=cpu"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "model.json").exists()
