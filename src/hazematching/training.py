"""The one training loop every method uses: a LightningModule around a :class:`Method` and a
trainer factory (checkpoints best-by-validation and last, resume, EMA, logs, DDP, precision).

Checkpoints are written atomically next to their final name (:class:`AtomicCheckpointIO`), so a
run killed at any point leaves the previous ``last.ckpt`` intact; each checkpoint also stores
the model config, so that resuming with a different network is refused by name.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import (
    Callback,
    ModelCheckpoint,
    RichProgressBar,
    Timer,
    WeightAveraging,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader, Dataset

from hazematching.config import ModelConfig, TrainingConfig
from hazematching.io import atomic_path
from hazematching.methods.base import Method

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")
_VAL_SEED = 1234
_CONFIG_KEY = "hazematching_config"
#: Config fields that shape the network: resuming with other values cannot work.
_NETWORK_FIELDS = ("method", "in_channels", "network", "method_options")

# Two Lightning warnings that do not apply here. Logging counts steps across epochs, so epochs
# shorter than log_every_n_steps are logged all the same. A resumed epoch restarts its patch
# indices at 0: each index is an independent random patch (RandomPatches), so it trains on
# patches of the same distribution, only not the ones the interrupted run had left.
warnings.filterwarnings("ignore", "The number of training batches .* is smaller than the "
                        "logging interval", PossibleUserWarning)
warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the "
                        "epoch ended", PossibleUserWarning)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names it and what to do."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint under a temporary name in its folder, then renames it.

    Lightning's own writer stages the file in the system temporary folder and moves it, which is
    a copy (not atomic) when that folder is on another file system, and leaves mode 0600.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported when saving checkpoints")
        # Serialised in memory first (as Lightning does): torch's file writer reports a full
        # disk as a bare RuntimeError, a plain file write as the OSError it is.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_path(Path(path)) as tmp:
            tmp.write_bytes(buffer.getbuffer())


def read_checkpoint(path: Path, resume_hint: str = "pass --no-resume (Python: resume=False) "
                    "to start over") -> dict[str, Any]:
    """Load a Lightning checkpoint safely (``weights_only=True``: no pickled code runs).

    Raises:
        CheckpointError: the file is truncated, not a checkpoint, or holds anything but tensors
            and plain data; the message names it and says how to start over.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types; its text is not shown
        # torch's message would suggest weights_only=False, i.e. running the file's code.
        raise CheckpointError(f"{path} is unreadable (truncated or not a checkpoint: "
                              f"{type(err).__name__}); {resume_hint}") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "epoch", "global_step"} <= set(ckpt):
        raise CheckpointError(f"{path} is not a training checkpoint of this package (no "
                              f"state_dict/epoch/global_step); {resume_hint}")
    return ckpt


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
    """Dotted fields whose values differ; fields only one side knows (another package version)
    are left to the shape check."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) & set(new), key=str)
                for d in _diff(old[k], new[k], f"{prefix}.{k}")]
    return [] if old == new else [f"{prefix}: {old!r} in the checkpoint, {new!r} now"]


def check_resumable(ckpt: dict[str, Any], module: pl.LightningModule, config: ModelConfig,
                    path: Path) -> None:
    """Refuse to resume from `ckpt` into a network of another shape.

    Raises:
        CheckpointError: naming the config fields that differ from the checkpoint's, or (for
            checkpoints without a stored config) the parameters whose shapes differ.
    """
    hint = ("use the settings it was trained with to resume, or pass --no-resume (Python: "
            "resume=False) to start over")
    stored = ckpt.get(_CONFIG_KEY)
    if isinstance(stored, dict):
        now = config.model_dump(mode="json")
        diffs = [d for f in _NETWORK_FIELDS if f in stored for d in _diff(stored[f], now[f], f)]
        if diffs:
            raise CheckpointError(f"cannot resume from {path}: the network differs ("
                                  f"{'; '.join(diffs[:5])}); {hint}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state_dict; {hint}")
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    bad = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
    if bad:
        raise CheckpointError(f"cannot resume from {path}: its weights do not fit the "
                              f"configured network ({len(bad)} parameter(s) differ, e.g. "
                              f"{', '.join(bad[:3])}); {hint}")


def check_settings(cfg: TrainingConfig) -> None:
    """Validate the trainer settings (accelerator, devices, strategy, precision, max_steps)
    before any work, by building a bare Lightning Trainer with them.

    Raises:
        ValueError: naming the setting Lightning refused, e.g. a GPU asked for on a machine
            without one, or a negative max_steps.
    """
    try:
        pl.Trainer(max_epochs=cfg.epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator,
                   devices=cfg.devices, strategy=cfg.strategy,
                   precision=resolve_precision(cfg.precision, cfg.accelerator), logger=False,
                   enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"training settings (accelerator={cfg.accelerator!r}, "
                         f"devices={cfg.devices!r}, strategy={cfg.strategy!r}, "
                         f"max_steps={cfg.max_steps}): {err}") from None


class RestorationModule(pl.LightningModule):
    """Lightning wrapper: delegates the objective to the method, owns logging and RNG hygiene."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method
        self.automatic_optimization = not method.manual_optimization
        self._rng_state: Any = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        target, cond = batch
        if self.method.manual_optimization:
            losses = self.method.manual_step(self, target, cond)
            for k, v in losses.items():
                self.log(f"train_{k}", v, prog_bar=k == "loss")
            return None
        loss = self.method.training_loss(target, cond)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step "
                                     f"{self.global_step}; lower training.lr or check the data")
        # Each rank logs its own loss: syncing would cost DDP a collective every step for a
        # curve that only rank 0 writes. val_loss is synced: it picks the best checkpoint.
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        # The flow-matching loss is random in (t, x0): fix them so that epochs are comparable.
        self._rng_state = (torch.get_rng_state(),
                           torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        torch.manual_seed(_VAL_SEED + self.global_rank)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        target, cond = batch
        loss = self.method.validation_loss(target, cond)
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        cpu, cuda = self._rng_state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    def configure_optimizers(self) -> Any:
        return self.method.configure_optimizers()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[_CONFIG_KEY] = self.method.config.model_dump(mode="json")


class EMA(WeightAveraging):
    """Exponential moving average of the weights with a warm-up.

    The effective decay is min(decay, (1 + n) / (10 + n)) after n updates, so that short runs are
    not dominated by the initial weights. Validation, checkpoints ('state_dict') and the exported
    model use the averaged weights; the raw weights are kept for resuming.
    """

    def __init__(self, decay: float):
        def multi_avg_fn(avg: list[torch.Tensor], cur: list[torch.Tensor], n: torch.Tensor
                         ) -> None:
            # One fused update of all tensors of a device and dtype, not one Python call and
            # two temporaries per parameter: avg ← avg + (1 − d)·(cur − avg).
            d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
            if avg[0].is_floating_point():
                torch._foreach_lerp_(avg, cur, 1.0 - d)
            else:
                torch._foreach_copy_(avg, cur)

        super().__init__(multi_avg_fn=multi_avg_fn)


class _SetEpoch(Callback):
    """Tells the random-patch dataset the epoch, so each epoch draws new patches."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ds = trainer.train_dataloader.dataset if trainer.train_dataloader is not None else None
        if hasattr(ds, "epoch"):
            ds.epoch = trainer.current_epoch


class _ValidateAtEnd(Callback):
    """Ends the fit through ``trainer.should_stop`` on its last step (max_steps reached, or the
    last batch of the last epoch), on which Lightning validates and writes the checkpoints
    whatever the cadence: the final weights are always in last.ckpt and compete for best.ckpt.
    (The max_minutes budget ends a fit the same way, through Lightning's Timer.)"""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        last_step = trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= \
            trainer.max_epochs
        if last_step or (last_epoch and batch_idx + 1 >= trainer.num_training_batches):
            trainer.should_stop = True


#: A step interval no run reaches: validation only when :class:`_EveryMinutes` asks for it.
_NEVER = 2**62


class _EveryMinutes(Callback):
    """Validation once `minutes` of training have passed since the previous one (or the start).

    Rank 0 decides and broadcasts its decision, as Lightning's Timer does for max_time, so that
    every rank of a distributed run validates after the same step; Lightning's own time-based
    ``val_check_interval`` lets each rank decide by its own clock, and ranks that disagree by
    one step wait for each other for ever. The decision sets the step interval Lightning checks
    right after this hook: 1 (validate now) or never.
    """

    def __init__(self, minutes: float):
        self.seconds = minutes * 60.0
        self.since = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.since = time.monotonic()
        trainer.val_check_batch = _NEVER

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        due = time.monotonic() - self.since >= self.seconds
        if trainer.world_size > 1:
            due = trainer.strategy.broadcast(due, src=0)
        trainer.val_check_batch = 1 if due else _NEVER

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.since = time.monotonic()
        trainer.val_check_batch = _NEVER


class LearningRate(Callback):
    """Sets every optimiser's learning rate before each step from the training's progress:
    ``training.lr`` × a linear warm-up over ``warmup_steps`` × (for ``lr_schedule`` 'cosine')
    a half cosine from 1 to ``final_lr_fraction``.

    Progress p ∈ [0, 1] is the furthest along of the budgets that end the fit: optimiser steps
    over max_steps, epochs (with the fraction of the current one) over max_epochs, and the time
    Lightning's Timer has counted over max_time. All three survive a resume (the step and epoch
    in the checkpoint, the Timer's elapsed time in its state), so a resumed run continues on
    the same curve; no scheduler state is kept. Rank 0's progress is broadcast when time can
    decide it, so that all ranks of a distributed run step with one rate.
    """

    def __init__(self, cfg: TrainingConfig):
        self.cfg = cfg

    def progress(self, trainer: pl.Trainer, batch_idx: int) -> float:
        """The fraction of the training budget used so far (0 … 1)."""
        p = 0.0
        if trainer.max_steps is not None and trainer.max_steps > 0:
            p = trainer.global_step / trainer.max_steps
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            batches = trainer.num_training_batches
            within = batch_idx / batches if batches and batches != float("inf") else 0.0
            p = max(p, (trainer.current_epoch + within) / trainer.max_epochs)
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is not None:
            elapsed = timer.time_elapsed()
            p_time = elapsed / max(elapsed + remaining, 1e-9)
            if trainer.world_size > 1:
                p_time = trainer.strategy.broadcast(p_time, src=0)
            p = max(p, p_time)
        return min(max(p, 0.0), 1.0)

    def factor(self, trainer: pl.Trainer, batch_idx: int) -> float:
        """The learning rate's multiple of ``training.lr`` for the coming step."""
        cfg = self.cfg
        f = 1.0
        if cfg.lr_schedule == "cosine":
            p = self.progress(trainer, batch_idx)
            f = cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (
                1 + math.cos(math.pi * p))
        if cfg.warmup_steps:
            f *= min(1.0, (trainer.global_step + 1) / cfg.warmup_steps)
        return f

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        lr = self.cfg.lr * self.factor(trainer, batch_idx)
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr


def _val_schedule(cfg: TrainingConfig) -> tuple[dict[str, Any], list[Callback]]:
    """Lightning's validation arguments and callbacks for ``cfg.val_cadence``."""
    kind, every = cfg.val_cadence
    if kind == "steps":  # counted across epochs
        return {"val_check_interval": int(every), "check_val_every_n_epoch": None}, []
    if kind == "epochs":
        return {"val_check_interval": 1.0, "check_val_every_n_epoch": int(every)}, []
    return ({"val_check_interval": _NEVER, "check_val_every_n_epoch": None},
            [_EveryMinutes(every)])


def resolve_precision(precision: str, accelerator: str) -> str:
    """'auto' → bf16-mixed on a CUDA GPU with bf16 support, else 32-bit."""
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def build_trainer(cfg: TrainingConfig, out_dir: Path, *, automatic_optimization: bool = True,
                  extra_callbacks: list[Callback] | None = None) -> pl.Trainer:
    """A Lightning Trainer writing checkpoints and CSV/TensorBoard logs under `out_dir`."""
    best = ModelCheckpoint(dirpath=out_dir / CHECKPOINT_DIR, filename="best", monitor="val_loss",
                           mode="min", save_top_k=1, enable_version_counter=False)
    # Lightning 2.6's save_last writes last.ckpt only when a top-k checkpoint is written at the
    # same step, i.e. when the validation loss improved; resuming needs the latest state, which
    # a checkpoint without a monitor writes at every save.
    last = ModelCheckpoint(dirpath=out_dir / CHECKPOINT_DIR, filename="last", save_top_k=1,
                           enable_version_counter=False)
    schedule, cadence = _val_schedule(cfg)
    # best first: trainer.checkpoint_callback
    callbacks: list[Callback] = [best, last, _SetEpoch(), _ValidateAtEnd(), *cadence]
    if cfg.lr_schedule != "constant" or cfg.warmup_steps:
        callbacks.append(LearningRate(cfg))
    if cfg.ema_decay is not None:
        callbacks.append(EMA(cfg.ema_decay))
    if cfg.progress_bar:
        callbacks.append(RichProgressBar(leave=True))
    callbacks += extra_callbacks or []
    loggers = [CSVLogger(out_dir / LOG_DIR, name="csv"),
               TensorBoardLogger(out_dir / LOG_DIR, name="tensorboard", default_hp_metric=False)]
    return pl.Trainer(
        max_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg.precision, cfg.accelerator),
        gradient_clip_val=cfg.grad_clip if automatic_optimization else None,
        **schedule,
        limit_val_batches=cfg.limit_val_batches,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=cfg.log_every_n_steps,
        num_sanity_val_steps=0,
        deterministic=False,
    )


def fit(method: Method, train: Dataset, val: Dataset, cfg: TrainingConfig, out_dir: Path, *,
        num_workers: int = 0, resume: bool = True, callbacks: list[Callback] | None = None
        ) -> tuple[pl.Trainer, Path | None]:
    """Train `method` in place and return the trainer and the best checkpoint's path.

    With `resume`, training continues from ``out_dir/checkpoints/last.ckpt`` when it exists,
    after checking that it is readable (:func:`read_checkpoint`) and fits the network
    (:func:`check_resumable`). The method's weights are left as the best checkpoint's (EMA
    weights when EMA is on). `callbacks` are added to the trainer's own (see
    :func:`build_trainer`).
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = RestorationModule(method)
    last = out_dir / CHECKPOINT_DIR / "last.ckpt"
    if resume and last.exists():
        check_resumable(read_checkpoint(last), module, method.config, last)
    trainer = build_trainer(cfg, out_dir, automatic_optimization=module.automatic_optimization,
                            extra_callbacks=callbacks)
    loader_kw = dict(batch_size=cfg.batch_size, num_workers=num_workers,
                     persistent_workers=False, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train, shuffle=False, drop_last=len(train) > cfg.batch_size,
                              **loader_kw)
    val_loader = DataLoader(val, shuffle=False, **loader_kw)
    trainer.fit(module, train_loader, val_loader,
                ckpt_path=str(last) if resume and last.exists() else None)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best_path = Path(best) if best else (last if last.exists() else None)
    if best_path is not None:
        module.load_state_dict(read_checkpoint(best_path, "train again with --no-resume")[
            "state_dict"])
    return trainer, best_path
