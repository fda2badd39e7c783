"""Distil a trained HazeMatching model into a few-step sampler (``hazematching distill``).

The distilled model is a copy of the teacher's network, trained further with the flow-map
objective of :class:`~hazematching.methods.distillation.FlowMapDistillation` so that K uniform
Euler steps (K network calls per sample) follow the teacher's many-step solve. It is written
as an ordinary model directory: same normalisation, ``method_options.distilled_steps`` = K,
sampling fixed to that grid, the std calibrated again on the validation images at the end
(its spread is another estimator than the teacher's). Everything ``train`` offers applies:
budgets by steps, epochs or minutes, checkpoints, resuming, several GPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from hazematching.api import Model, load_model
from hazematching.data.pairs import PairedImages
from hazematching.methods.distillation import FlowMapDistillation
from hazematching.methods.hazematching import HazeMatching, distilled_grid

#: The distillation's learning rate as a fraction of the teacher's ``training.lr``: it starts
#: from trained weights, so it takes smaller steps than training from scratch.
LR_FRACTION = 0.2


def distill(teacher: str | Path | Model, train: str | Path | PairedImages | None = None,
            val: str | Path | PairedImages | None = None, *, out_dir: str | Path,
            steps: int = 4, teacher_steps: int = 2, overrides: dict[str, Any] | None = None,
            resume: bool = True, overwrite: bool = False,
            callbacks: list[Callback] | None = None) -> Model:
    """Distil `teacher` into a `steps`-step flow map trained on `train`, written to `out_dir`.

    Args:
        teacher: a trained HazeMatching model (directory, archive or loaded).
        train, val: the training pairs and validation pairs, as for :meth:`Model.fit` (use the
            teacher's: its validation images then stay unseen and calibrate the student).
        out_dir: the distilled model's directory; must not be the teacher's.
        steps: Euler steps (= network calls) per posterior sample of the distilled model.
        teacher_steps: steps of the teacher's own solver (``sampling.solver``) that make the
            target of one student step; e.g. 2 midpoint steps = 4 teacher calls per training
            state.
        overrides: dotted config overrides for the distillation run, e.g.
            ``{"training.max_minutes": 20}``. By default it trains with the teacher's training
            settings (budget, batch, patch size) at :data:`LR_FRACTION` of its learning rate.
        resume, overwrite, callbacks: as for :meth:`Model.fit`.

    Returns:
        The distilled model, loaded from `out_dir` (on the process that wrote it; other ranks
        of a distributed run get the trained student).

    Raises:
        ValueError: the teacher is not a trained HazeMatching model, is itself distilled, or
            lives in `out_dir`; bad steps or overrides.
    """
    teacher = teacher if isinstance(teacher, Model) else load_model(teacher)
    if not isinstance(teacher.method, HazeMatching) or teacher.normalizer is None:
        raise ValueError(f"distillation needs a trained HazeMatching model as the teacher, got "
                         f"method {teacher.config.method!r}")
    if teacher.method.options.distilled_steps:
        raise ValueError(f"the teacher is already distilled (to "
                         f"{teacher.method.options.distilled_steps} steps); distil from the "
                         f"model it was distilled from")
    if steps < 1 or teacher_steps < 1:
        raise ValueError(f"steps and teacher_steps must be >= 1, got {steps} and "
                         f"{teacher_steps}")
    out = Path(out_dir)
    if teacher.path is not None and out.resolve() == Path(teacher.path).resolve():
        raise ValueError(f"{out} holds the teacher; write the distilled model to another --out")
    grid = {f"sampling.{k}": v for k, v in distilled_grid(steps).items()}
    config = teacher.config.with_overrides(
        {"method_options.distilled_steps": steps, **grid,
         "training.lr": teacher.config.training.lr * LR_FRACTION, **(overrides or {})},
        source="distillation settings")
    student = Model(config, method=FlowMapDistillation(config, teacher.method, teacher_steps),
                    normalizer=teacher.normalizer, provenance={"distillation": {
                        "teacher": str(teacher.path) if teacher.path else None,
                        "steps": steps, "teacher_steps": teacher_steps,
                        "teacher_sampling": teacher.config.sampling.estimator()}})
    student.fit(train, val, out_dir=out, resume=resume, overwrite=overwrite,
                callbacks=callbacks, keep_normalization=True)
    return load_model(student.path) if student.path is not None else student
