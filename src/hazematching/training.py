"""The one training loop every method uses: a LightningModule around a :class:`Method` and a
trainer factory (checkpoints best-by-validation and last, resume, EMA, logs, DDP, precision)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, WeightAveraging
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from hazematching.config import TrainingConfig
from hazematching.methods.base import Method

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
_VAL_SEED = 1234


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
                self.log(f"train_{k}", v, prog_bar=k == "loss", sync_dist=True)
            return None
        loss = self.method.training_loss(target, cond)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step "
                                     f"{self.global_step}; lower training.lr or check the data")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
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


class EMA(WeightAveraging):
    """Exponential moving average of the weights with a warm-up.

    The effective decay is min(decay, (1 + n) / (10 + n)) after n updates, so that short runs are
    not dominated by the initial weights. Validation, checkpoints ('state_dict') and the exported
    model use the averaged weights; the raw weights are kept for resuming.
    """

    def __init__(self, decay: float):
        def avg_fn(avg: torch.Tensor, cur: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
            return avg * d + cur * (1.0 - d)

        super().__init__(avg_fn=avg_fn)


class _SetEpoch(Callback):
    """Tells the random-patch dataset the epoch, so each epoch draws new patches."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ds = trainer.train_dataloader.dataset if trainer.train_dataloader is not None else None
        if hasattr(ds, "epoch"):
            ds.epoch = trainer.current_epoch


def resolve_precision(precision: str, accelerator: str) -> str:
    """'auto' → bf16-mixed on a CUDA GPU with bf16 support, else 32-bit."""
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def build_trainer(cfg: TrainingConfig, out_dir: Path, *, automatic_optimization: bool = True,
                  extra_callbacks: list[Callback] | None = None) -> pl.Trainer:
    """A Lightning Trainer writing checkpoints and CSV/TensorBoard logs under `out_dir`."""
    ckpt = ModelCheckpoint(dirpath=out_dir / CHECKPOINT_DIR, filename="best", monitor="val_loss",
                           mode="min", save_top_k=1, save_last=True, enable_version_counter=False)
    callbacks: list[Callback] = [ckpt, _SetEpoch()]
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
        check_val_every_n_epoch=cfg.val_every_n_epochs,
        limit_val_batches=cfg.limit_val_batches,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        deterministic=False,
    )


def fit(method: Method, train: Dataset, val: Dataset, cfg: TrainingConfig, out_dir: Path, *,
        num_workers: int = 0, resume: bool = True) -> tuple[pl.Trainer, Path | None]:
    """Train `method` in place and return the trainer and the best checkpoint's path.

    With `resume`, training continues from ``out_dir/checkpoints/last.ckpt`` when it exists.
    The method's weights are left as the best checkpoint's (EMA weights when EMA is on).
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = RestorationModule(method)
    trainer = build_trainer(cfg, out_dir, automatic_optimization=module.automatic_optimization)
    loader_kw = dict(batch_size=cfg.batch_size, num_workers=num_workers,
                     persistent_workers=False, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train, shuffle=False, drop_last=len(train) > cfg.batch_size,
                              **loader_kw)
    val_loader = DataLoader(val, shuffle=False, **loader_kw)
    last = out_dir / CHECKPOINT_DIR / "last.ckpt"
    trainer.fit(module, train_loader, val_loader,
                ckpt_path=str(last) if resume and last.exists() else None)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best_path = Path(best) if best else (last if last.exists() else None)
    if best_path is not None:
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    return trainer, best_path
