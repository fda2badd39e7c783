"""Training-loop overhead: ``hazematching train`` against a plain PyTorch loop, side by side.

In one process, on the same simulated data, network and objective, it times in turn (plain,
Lightning, plain, Lightning, … so that machine load affects both alike):
  (a) a plain PyTorch loop: a DataLoader over the same RandomPatches, the HazeMatching
      flow-matching loss, backward, gradient-norm clipping, an Adam step — nothing else;
  (b) ``Model.fit`` — what ``hazematching train`` runs: the project's Lightning trainer with its
      defaults (EMA, CSV/TensorBoard logging, progress bar, validation, best/last checkpoints).

Every run takes `--steps` optimiser steps; its steady state is the time between consecutive
steps' ends from the second step on (a warm-up run comes first, untimed). Lightning's steps are
split into those with a validation (and its checkpoint writes) and those without: the loop's
own cost per step is the median of the steps without one; a validation costs its step's extra
time, or, when the cadence does not fall within the run, the validation and checkpoints that end
it. The overhead of a long run is the loop's own plus one validation per cadence interval
(``training.val_cadence``); the overhead measured directly over the runs' steps is printed too.
Each overhead is the median over rounds of the round's ratio to the plain run next to it in time,
which cancels most of the machine's changing load. `--compare` times another Lightning arm with
settings on top, in the same rounds. One more Lightning run under cProfile shows where the time
goes (cProfile slows Python code down, so the Python-heavy shares are upper bounds).

Usage:
    python benchmarks/bench_training_loop.py        # default network: ~15 min on 2 busy cores
    python benchmarks/bench_training_loop.py --width 8 --steps 6 --rounds 2     # a quick look
    # against validating every (tiny) epoch and logging every step, as before:
    python benchmarks/bench_training_loop.py --compare training.val_every_n_epochs=1
        --compare training.log_every_n_steps=1
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from hazematching.api import Model
from hazematching.cli.core import _parse_sets
from hazematching.config import ModelConfig
from hazematching.data.normalization import Normalizer
from hazematching.data.pairs import load_pairs
from hazematching.data.patches import RandomPatches
from hazematching.data.synthetic import simulate_pairs, write_pairs
from hazematching.methods import build_method
from hazematching.training import resolve_precision

#: (label, module path fragment, function name) of the hooks the cProfile breakdown reports.
PROFILED = (
    ("training_step (forward + loss)", "hazematching/training.py", "training_step"),
    ("backward", "lightning/pytorch/core/module.py", "backward"),
    ("gradient clipping", "lightning/pytorch/core/module.py", "clip_gradients"),
    ("optimiser step incl. the above", "lightning/pytorch/core/optimizer.py", "step"),
    ("patch drawing (dataset items)", "hazematching/data/patches.py", "__getitem__"),
    ("EMA update", "lightning/pytorch/callbacks/weight_averaging.py", "on_train_batch_end"),
    ("progress bar", "callbacks/progress/rich_progress.py", "on_train_batch_end"),
    ("self.log in training_step", "lightning/pytorch/core/module.py", "log"),
    ("loggers (CSV, TensorBoard)", "logger_connector/logger_connector.py", "log_metrics"),
    ("validation loop", "lightning/pytorch/loops/evaluation_loop.py", "run"),
    ("checkpoints (state dump + write)", "callbacks/model_checkpoint.py", "_save_checkpoint"),
)


#: The clock of every timing: wall time, or (``--clock cpu``) this process's CPU time, which
#: other processes on a shared machine barely change.
_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = ["wall"]


def _now() -> float:
    return _CLOCKS[_clock[0]]()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Run:
    """One timed run: the ends of its steps, its validations' starts, its whole duration (s)."""

    ticks: list[float] = field(default_factory=list)
    val_starts: list[float] = field(default_factory=list)
    end: float = 0.0
    wall: float = 0.0

    def intervals(self) -> tuple[list[float], list[float]]:
        """Steady-state step times (from the second step on), without and with a validation."""
        plain, with_val = [], []
        for a, b in zip(self.ticks, self.ticks[1:]):
            (with_val if any(a < v < b for v in self.val_starts) else plain).append(b - a)
        return plain, with_val

    def final_validation(self) -> float | None:
        """Seconds from the last step's end to the end of training if a validation ran there."""
        return self.end - self.ticks[-1] if any(v > self.ticks[-1] for v in self.val_starts) \
            else None


class StepClock(pl.Callback):
    """Records the end of each optimiser step, each validation's start and the training's end."""

    def __init__(self, device: torch.device):
        self.device, self.run = device, Run()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(self.device)
        self.run.ticks.append(_now())

    def on_validation_start(self, trainer, pl_module) -> None:
        self.run.val_starts.append(_now())

    def on_train_end(self, trainer, pl_module) -> None:
        _sync(self.device)
        self.run.end = _now()


def make_data(folder: Path, n_train: int, n_val: int, size: int, seed: int) -> Path:
    """Simulated pairs written as a dataset root with train/ and val/ (paper layout)."""
    n = n_train + n_val
    target, widefield = simulate_pairs(n, size, seed=seed)
    write_pairs(folder, target, widefield, split_fractions=(n_train / n, n_val / n, 0.0))
    return folder


def train_patches(cfg: ModelConfig, root: Path) -> RandomPatches:
    """The training patches exactly as :meth:`Model.fit` draws them."""
    d = cfg.data
    pairs = load_pairs(root / "train", d.layout, d.axes)
    norm = Normalizer.fit(pairs.targets, pairs.inputs, d.normalization, d.percentiles)
    return RandomPatches(pairs, norm, d.patch_size, length=d.patches_per_epoch, augment=d.augment,
                         seed=cfg.training.seed)


def plain_loop(cfg: ModelConfig, dataset: RandomPatches, steps: int, device: torch.device
               ) -> Run:
    """The same work as one Lightning training step, written out: data, loss, backward, clip,
    Adam; `steps` optimiser steps over as many epochs of `dataset` as it takes."""
    t = cfg.training
    precision = resolve_precision(t.precision, t.accelerator)
    if precision not in ("32-true", "bf16-mixed"):
        raise ValueError(f"the plain loop implements fp32 and bf16-mixed, not {precision}")
    torch.manual_seed(t.seed)
    start = _now()
    method = build_method(cfg).to(device).train()
    optimiser = method.configure_optimizers()
    loader = DataLoader(dataset, batch_size=t.batch_size, shuffle=False,
                        drop_last=len(dataset) > t.batch_size, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda")
    run, epoch = Run(), 0
    while len(run.ticks) < steps:
        dataset.epoch = epoch
        for target, cond in loader:
            target, cond = target.to(device), cond.to(device)
            with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16-mixed"):
                loss = method.training_loss(target, cond)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(method.parameters(), t.grad_clip)
            optimiser.step()
            _sync(device)
            run.ticks.append(_now())
            if len(run.ticks) == steps:
                break
        epoch += 1
    run.end = _now()
    run.wall = run.end - start
    return run


def lightning_run(cfg: ModelConfig, root: Path, out: Path, device: torch.device) -> Run:
    """``Model.fit`` as ``hazematching train`` calls it (fresh model directory each time)."""
    clock = StepClock(device)
    start = _now()
    Model(cfg).fit(root, out_dir=out, resume=False, callbacks=[clock])
    clock.run.wall = _now() - start
    shutil.rmtree(out)
    return clock.run


def validation_interval_steps(cfg: ModelConfig, batches_per_epoch: int, step_s: float) -> float:
    """Optimiser steps between two validations in a long run with this config's cadence."""
    kind, every = cfg.training.val_cadence
    return {"steps": every, "epochs": every * batches_per_epoch,
            "minutes": every * 60.0 / step_s}[kind]


def profile_breakdown(cfg: ModelConfig, root: Path, out: Path, device: torch.device
                      ) -> list[tuple[str, float]]:
    """Seconds per step spent in each of :data:`PROFILED`, from one Lightning run under
    cProfile (cumulative time, so nested entries overlap)."""
    prof = cProfile.Profile()
    prof.enable()
    lightning_run(cfg, root, out, device)
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, function): (cc, nc, tt, ct, callers)}
    steps = cfg.training.max_steps
    rows = []
    for label, path, name in PROFILED:
        ct = sum(v[3] for (f, _, fn), v in stats.items()
                 if fn == name and f.replace("\\", "/").endswith(path))
        rows.append((label, ct / steps))
    return rows


@dataclass
class Arm:
    """A Lightning configuration timed against the plain loop, round by round."""

    name: str
    cfg: ModelConfig
    runs: list[Run] = field(default_factory=list)

    def summary(self, plain: list[Run], batches: int) -> dict[str, float]:
        """Overheads over the plain loop: median over rounds of each round's ratio (the two
        runs of a round are next to each other in time, so the ratio cancels the machine's
        changing load), with per-step medians within a run."""
        costs = []
        loop_ratio, long_ratio, direct_ratio, loops = [], [], [], []
        for run in self.runs:
            free, with_val = run.intervals()
            loop = float(np.median(free))
            loops.append(loop)
            costs += [v - loop for v in with_val]
            if (c := run.final_validation()) is not None:
                costs.append(c)
        val_cost = float(np.mean(costs)) if costs else 0.0
        for run, loop, p_run in zip(self.runs, loops, plain, strict=True):
            p = float(np.median(p_run.intervals()[0]))
            every = validation_interval_steps(self.cfg, batches, loop)
            loop_ratio.append(loop / p)
            long_ratio.append((loop + val_cost / every) / p)
            direct_ratio.append(float(np.mean(sum(run.intervals(), []))) /
                                float(np.mean(p_run.intervals()[0])))
        loop = float(np.median(loops))
        return {"loop_s": loop, "val_cost_s": val_cost, "n_costs": len(costs),
                "every": validation_interval_steps(self.cfg, batches, loop),
                "loop_pct": 100 * (float(np.median(loop_ratio)) - 1),
                "long_pct": 100 * (float(np.median(long_ratio)) - 1),
                "direct_pct": 100 * (float(np.median(direct_ratio)) - 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=None,
                    help="network.model_channels (default: the default network's)")
    ap.add_argument("--steps", type=int, default=8, help="optimiser steps per timed run")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of plain + Lightning runs")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=12, help="training images")
    ap.add_argument("--val-images", type=int, default=4)
    ap.add_argument("--size", type=int, default=128, help="image side (px)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="any config field, as for `hazematching train --set` (all arms)")
    ap.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE",
                    help="also time a Lightning arm with these settings on top (repeatable), "
                         "e.g. the settings before the cadence fix: training.val_every_n_epochs=1 "
                         "training.log_every_n_steps=1")
    ap.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                    help="what is timed: wall time or this process's CPU time (auto: CPU time "
                         "on a CPU, which other work on a shared machine barely changes; wall "
                         "time on a GPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile breakdown")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp)")
    args = ap.parse_args()

    overrides = {"data.patch_size": args.patch, "training.batch_size": args.batch,
                 "training.max_steps": args.steps, "training.calibrate": False,
                 "network.model_channels": args.width, **_parse_sets(args.sets)}
    cfg = ModelConfig().with_overrides(overrides, source="benchmark options")
    arms = [Arm("defaults", cfg)]
    if args.compare:
        arms.append(Arm("--compare", cfg.with_overrides(_parse_sets(args.compare),
                                                        source="--compare")))
    device = torch.device("cuda" if torch.cuda.is_available()
                          and cfg.training.accelerator in ("auto", "gpu", "cuda") else "cpu")
    _clock[0] = args.clock if args.clock != "auto" else ("cpu" if device.type == "cpu"
                                                         else "wall")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_training_loop_"))
    root = work / f"data_{args.images}_{args.val_images}_{args.size}"
    if not root.exists():
        make_data(root, args.images, args.val_images, args.size, seed=0)
    dataset = train_patches(cfg, root)
    batches = len(dataset) // cfg.training.batch_size or 1
    n_params = sum(p.numel() for p in build_method(cfg).parameters())
    print(f"device {device}, {torch.get_num_threads()} threads; network {n_params:,} parameters; "
          f"batch {args.batch} × {args.patch}² px; {len(dataset)} patches = {batches} steps per "
          f"epoch; {args.steps} steps per run, {args.rounds} rounds; {_clock[0]} time",
          flush=True)
    for arm in arms:
        t = arm.cfg.training
        print(f"Lightning {arm.name}: validation every {' '.join(map(str, t.val_cadence[::-1]))}"
              f", logs every {t.log_every_n_steps} steps, EMA {t.ema_decay}, progress bar "
              f"{t.progress_bar}", flush=True)

    plain_loop(cfg, dataset, 3, device)  # warm-up, untimed: kernels, allocator, page cache
    plain: list[Run] = []
    for r in range(args.rounds):
        plain.append(plain_loop(cfg, dataset, args.steps, device))
        line = f"round {r + 1}: plain {np.median(plain[-1].intervals()[0]):.3f} s/step"
        for i, arm in enumerate(arms):
            arm.runs.append(lightning_run(arm.cfg, root, work / f"model_{r}_{i}", device))
            free, with_val = arm.runs[-1].intervals()
            line += (f", Lightning {arm.name} {np.median(free):.3f} s/step + {len(with_val)} "
                     f"validation(s)")
        print(line, flush=True)

    p = float(np.median([x for run in plain for x in run.intervals()[0]]))
    print(f"\nresults (steady state from each run's second step; medians; overheads are the "
          f"median over rounds of each round's Lightning/plain ratio)\n"
          f"  plain PyTorch loop                       {p:.3f} s/step")
    for arm in arms:
        s = arm.summary(plain, batches)
        print(f"  Lightning {arm.name}\n"
              f"    steps without validation               {s['loop_s']:.3f} s/step "
              f"(loop overhead {s['loop_pct']:+.1f} %)\n"
              f"    validation + checkpoints               {s['val_cost_s']:.3f} s each "
              f"({s['n_costs']} measured), one every {s['every']:.0f} steps at this cadence\n"
              f"    long run at this cadence               OVERHEAD {s['long_pct']:+.1f} %\n"
              f"    measured over these runs' steps        {s['direct_pct']:+.1f} %")
    fixed = [np.mean([r.wall - (r.ticks[-1] - r.ticks[0]) for r in runs])
             for runs in [plain] + [a.runs for a in arms]]
    print("  fixed cost per run (setup, first step, end of training, model save): " +
          ", ".join(f"{n} {f:.1f} s" for n, f in zip(["plain"] + [a.name for a in arms], fixed,
                                                     strict=True)))

    if not args.no_profile:
        print(f"\nwhere Lightning's time goes (defaults, one {args.steps}-step run under cProfile; "
              "per step, % of the plain loop's step; nested rows overlap; the validation and "
              "checkpoints at the end of the run are spread over its steps)")
        for label, sec in profile_breakdown(cfg, root, work / "model_profile", device):
            print(f"  {label:<34} {1000 * sec:8.1f} ms  {100 * sec / p:6.1f} %")
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
