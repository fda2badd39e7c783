"""Flow-map distillation: a few-step student trained from a HazeMatching teacher.

The teacher's sampler integrates dx/dt = v(t, x, y) with many small steps. The student has the
teacher's network and starts from its weights, but is evaluated only on a coarse uniform grid
t_k = k/K (K = ``distilled_steps``) and learns, at each t_k, the *average* velocity over its
step: the teacher's end point φ(x_k) of the interval [t_k, t_{k+1}], integrated with
``teacher_steps`` steps of the teacher's own solver, gives the target

    v̄(t_k, x_k, y) = (φ(x_k) − x_k) / (t_{k+1} − t_k),

so that one Euler step of the student lands where the teacher's fine solve lands. The student
thus follows the teacher's deterministic noise-to-image map: the same noise gives (close to) the
same sample, so the samples keep the teacher's diversity and texture and their spread stays an
uncertainty estimate (which is calibrated again after distillation).

Training states x_k are drawn on the flow-matching path x_t = (1 − t)·x0 + t·x1 of a training
pair (at t_0 = 0 that is the noise itself): for a teacher that has learnt the flow, that is the
distribution its sampler visits at t_k, and it costs no teacher calls. Each training step costs
the student's forward and backward pass plus the teacher calls of one interval
(``teacher_steps`` × the solver's calls per step, without gradients).

The distilled model is an ordinary HazeMatching model with ``method_options.distilled_steps``
set; only training needs this class (see :func:`hazematching.distill.distill`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hazematching.config import ModelConfig
from hazematching.methods.base import pixel_loss
from hazematching.methods.hazematching import HazeMatching
from hazematching.sampling import get_solver


class FlowMapDistillation(HazeMatching):
    """The distillation objective around a student (this module's own network) and a frozen
    teacher.

    Args:
        config: the student's config, with ``method_options.distilled_steps`` = K.
        teacher: a trained HazeMatching method; its network is copied into the student as the
            starting point and is never updated. It is not a sub-module, so the student's
            state_dict, checkpoints and saved weights hold the student only.
        teacher_steps: steps of the teacher's solver (``teacher.config.sampling.solver``) per
            student step.
    """

    def __init__(self, config: ModelConfig, teacher: HazeMatching, teacher_steps: int = 2):
        super().__init__(config)
        steps = self.options.distilled_steps
        if not steps:
            raise ValueError("the student's config needs method_options.distilled_steps >= 1")
        if teacher_steps < 1:
            raise ValueError(f"teacher_steps must be >= 1, got {teacher_steps}")
        if teacher.options.distilled_steps:
            raise ValueError("the teacher is itself distilled; distil from the model it was "
                             "distilled from")
        self.net.load_state_dict(teacher.net.state_dict())
        teacher = teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not registered: kept out of state_dict and DDP
        self.steps, self.teacher_steps = steps, teacher_steps
        self.teacher_solver = get_solver(teacher.config.sampling.solver)

    def teacher_end(self, x: Tensor, t0: Tensor, t1: Tensor, cond: Tensor) -> Tensor:
        """The teacher's solve of each row of `x` (B, 1, H, W) from its t0 to its t1 (both (B,)):
        `teacher_steps` uniform steps of the teacher's solver, without gradients."""
        teacher: HazeMatching = self.__dict__["teacher"]
        weight = next(teacher.parameters(), None)
        if weight is not None and weight.device != x.device:  # Lightning moves the student only
            teacher.to(x.device)
        frac = torch.linspace(0.0, 1.0, self.teacher_steps + 1, device=x.device, dtype=x.dtype)
        grid = t0[None] + frac[:, None] * (t1 - t0)[None]  # (teacher_steps + 1, B)
        with torch.no_grad():
            return self.teacher_solver(lambda t, xt: teacher.velocity(t, xt, cond), x, grid)

    def training_loss(self, target: Tensor, cond: Tensor) -> Tensor:
        B = target.shape[0]
        k = torch.randint(0, self.steps, (B,), device=target.device)
        t0 = (k / self.steps).to(target.dtype)
        t1 = ((k + 1) / self.steps).to(target.dtype)
        x0 = self.source(cond)  # the start the sampler draws (SIFM: its inference noise)
        tb = t0.view(-1, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * target
        end = self.teacher_end(xt, t0, t1, cond).float()
        mean_velocity = (end - xt.float()) / (t1 - t0).view(-1, 1, 1, 1).float()
        return pixel_loss(self.options.loss, self.velocity(t0, xt, cond), mean_velocity)
