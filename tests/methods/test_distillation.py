"""Flow-map distillation against the exact flow of a Gaussian posterior
(:class:`helpers.GaussianPosteriorVelocity`), and a distilled model's fixed sampling grid."""

import warnings

import pytest
import torch
from helpers import GaussianPosteriorVelocity
from torch import nn

from hazematching.api import Model
from hazematching.config import ModelConfig
from hazematching.methods import build_method
from hazematching.methods.distillation import FlowMapDistillation

NETWORK = {"model_channels": 8, "channel_mult": [1, 2], "attention_downsample": [2]}
SAMPLING = {"tile_size": 32, "tile_overlap": 8, "batch_size": 16}


def _student_config(steps=4):
    return ModelConfig.from_dict({
        "network": NETWORK, "method_options": {"distilled_steps": steps},
        "sampling": {**SAMPLING, "solver": "euler", "n_time_points": steps + 1}})


class ExactMeanVelocity(nn.Module):
    """The exact average velocity of the Gaussian flow over [t, t + 1/K]: what a perfect
    student learns."""

    def __init__(self, steps: int):
        super().__init__()
        self.h = 1.0 / steps

    def forward(self, t, inp):
        x, mu = inp[:, :1], inp[:, 1:2]
        end = GaussianPosteriorVelocity.flow(x, mu, t, t + self.h)
        return (end - x) / self.h


def _tiny_real_teacher():
    return build_method(ModelConfig.from_dict({"network": NETWORK, "sampling": SAMPLING}))


def _distillation(steps=4, teacher_steps=2):
    """A distillation whose teacher has the exact Gaussian-posterior velocity."""
    d = FlowMapDistillation(_student_config(steps), _tiny_real_teacher(), teacher_steps)
    d.teacher.net = GaussianPosteriorVelocity()
    return d


def test_the_teachers_solve_of_one_interval_is_the_exact_flow_map():
    d = _distillation(teacher_steps=2)
    x, mu = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t0, t1 = torch.tensor([0.0, 0.25, 0.5, 0.75]), torch.tensor([0.25, 0.5, 0.75, 1.0])
    end = d.teacher_end(x, t0, t1, mu)
    torch.testing.assert_close(end, GaussianPosteriorVelocity.flow(x, mu, t0, t1), atol=2e-3,
                               rtol=0)


def test_the_loss_vanishes_for_the_exact_mean_velocity_only():
    d = _distillation(steps=4, teacher_steps=8)
    target, mu = torch.randn(16, 1, 8, 8), torch.randn(16, 1, 8, 8)
    d.net = ExactMeanVelocity(4)
    torch.manual_seed(0)
    exact = float(d.training_loss(target, mu))
    d.net = GaussianPosteriorVelocity()  # the instantaneous velocity: the teacher itself
    torch.manual_seed(0)
    instantaneous = float(d.training_loss(target, mu))
    assert exact < 1e-5
    assert instantaneous > 100 * max(exact, 1e-6)


def test_the_student_starts_as_the_teacher_and_saves_without_it():
    teacher = _tiny_real_teacher()
    d = FlowMapDistillation(_student_config(), teacher, teacher_steps=2)
    for (name, p), q in zip(d.net.state_dict().items(), teacher.net.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(p, q, msg=name)
    assert not any(k.startswith("teacher") for k in d.state_dict())
    assert set(d.state_dict()) == set(teacher.state_dict())
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="already distilled|itself distilled"):
        FlowMapDistillation(_student_config(), build_method(_student_config()))


def test_a_distilled_network_is_always_sampled_on_its_own_grid():
    method = build_method(_student_config(steps=3))
    calls = []
    method.net.register_forward_pre_hook(lambda net, args: calls.append(float(args[0][0])))
    cond = torch.randn(2, 1, 16, 16)
    other = method.config.sampling.model_copy(update={"solver": "midpoint", "n_time_points": 10})
    with torch.no_grad():
        method.posterior_batch(cond, torch.randn(2, 1, 16, 16), other)
    assert calls == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert method.network_calls() == 3


def test_the_config_and_reconfigure_keep_the_distilled_grid():
    with pytest.raises(ValueError, match="fixes its sampling grid.*sampling.solver='midpoint'"):
        ModelConfig.from_dict({"network": NETWORK, "method_options": {"distilled_steps": 4},
                               "sampling": SAMPLING})
    model = Model(_student_config(4))
    with pytest.warns(UserWarning, match="distilled.*not applied: sampling.solver='midpoint'"):
        model.reconfigure({"sampling.solver": "midpoint", "sampling.n_time_points": 3,
                           "sampling.n_samples": 16})
    s = model.config.sampling
    assert (s.solver, s.n_time_points, s.schedule, s.n_samples) == ("euler", 5, "uniform", 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the grid it already has: nothing to warn about
        model.reconfigure({"sampling.solver": "euler", "sampling.n_time_points": 5})
