"""Validated configuration: one pydantic model per pipeline stage, gathered in :class:`ModelConfig`.

Configs are data: they serialise to YAML, are saved with every model and every output, and fail
before any work is done with a message that names the offending field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hazematching.calibration import CalibrationKind

AXES_ALLOWED = ("YX", "ZYX", "TYX", "SYX", "CYX", "ZCYX", "TCYX", "SCYX")


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML mapping; errors name the file and say what is wrong with it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of fields, got {type(raw).__name__}")
    return raw


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """How paired training data are read, normalised and cut into patches."""

    train_dir: Path | None = Field(None, description="Folder of training pairs (see `layout`).")
    val_dir: Path | None = Field(None, description="Folder of validation pairs; if absent a "
                                 "fraction of the training images is held out.")
    layout: Literal["auto", "paper", "input_target"] = Field(
        "auto", description="'paper': one TIFF per sample, channel 0 = confocal target, "
        "channel 1 = widefield input. 'input_target': sub-folders input/ and target/ with "
        "matching file names. 'auto' detects which.")
    axes: str | None = Field(None, description="Axes of the files (e.g. 'YX', 'ZYX', 'CYX'); "
                             "None guesses from the file.")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    patch_size: int = Field(128, ge=16, description="Side of the square training patches (px).")
    augment: bool = Field(True, description="Random flips and 90° rotations.")
    patches_per_epoch: int | None = Field(
        None, ge=1, description="Patches drawn per epoch; None = enough to cover the training "
        "pixels once (at least one per image).")
    normalization: Literal["meanstd", "percentile"] = "meanstd"
    percentiles: tuple[float, float] = (0.1, 99.9)
    num_workers: int = Field(0, ge=0)

    @field_validator("axes")
    @classmethod
    def _axes_known(cls, v: str | None) -> str | None:
        if v is not None and v.upper() not in AXES_ALLOWED:
            raise ValueError(f"axes {v!r} is not supported; expected one of "
                             f"{', '.join(AXES_ALLOWED)}")
        return None if v is None else v.upper()

    @field_validator("percentiles")
    @classmethod
    def _pct_order(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {v}")
        return v


class NetworkConfig(_Strict):
    """The time-conditioned ADM U-Net (defaults: the paper's network, ~3.7 M parameters)."""

    # Upper bounds: far above any network of this field (the paper's is 32 channels, 5 levels),
    # low enough that a typo (320 for 32, a 12-level network) fails here and not as an
    # out-of-memory error minutes into building or training.
    model_channels: int = Field(32, ge=4, le=1024)
    channel_mult: tuple[int, ...] = Field(
        (1, 1, 2, 3, 4), description="Width multiplier per level (1 to 8 levels, each 1–16).")
    num_res_blocks: int = Field(1, ge=1, le=16)
    attention_downsample: tuple[int, ...] = Field(
        (8,), description="Downsampling factors at which self-attention is used; 8 is the "
        "16×16 feature map of a 128-px patch, as in the paper.")
    num_heads: int = Field(1, ge=1, le=64)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("channel_mult")
    @classmethod
    def _mult(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not 1 <= len(v) <= 8 or any(not 1 <= m <= 16 for m in v):
            raise ValueError(f"channel_mult must hold 1 to 8 multipliers, each from 1 to 16, "
                             f"got {v}")
        return v

    @model_validator(mode="after")
    def _heads(self) -> NetworkConfig:
        for level, m in enumerate(self.channel_mult):
            width = self.model_channels * m
            deepest = level == len(self.channel_mult) - 1  # the middle block always attends
            if (deepest or 2**level in self.attention_downsample) and width % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} must divide the attention width "
                                 f"{width} (model_channels {self.model_channels} × channel_mult "
                                 f"{m} at downsampling {2**level})")
        return self

    @property
    def divisor(self) -> int:
        """Image sides must be multiples of this (one halving per level but the last)."""
        return 2 ** (len(self.channel_mult) - 1)


class TrainingConfig(_Strict):
    """Optimisation and the Lightning trainer."""

    epochs: int = Field(200, ge=1)
    max_steps: int = Field(-1, description="Stop after this many optimiser steps (-1: no limit).")
    max_minutes: float | None = Field(None, gt=0, description="Stop after this wall-clock time.")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-4, gt=0.0, description="Adam learning rate. 5e-4 (the paper: 1e-4, "
                      "which the dataset presets keep): measured on real-structure pairs at 150 "
                      "steps, HazeMatching's MMSE gained 3.0 dB and its samples went from noise "
                      "(HF power 42× the target's) to 0.92× (README, Configuration).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="'cosine': the learning rate falls from lr to "
        "final_lr_fraction·lr along a half cosine over the training budget (whichever of "
        "max_steps, epochs and max_minutes ends it first); 'constant': lr throughout.")
    final_lr_fraction: float = Field(0.0, ge=0.0, le=1.0, description="Where the cosine "
                                     "schedule ends, as a fraction of lr.")
    warmup_steps: int = Field(0, ge=0, description="Optimiser steps over which the learning "
                              "rate rises linearly from 0 to its scheduled value.")
    weight_decay: float = Field(0.0, ge=0.0)
    ema_decay: float | None = Field(0.999, description="EMA of the weights used for validation "
                                    "and prediction; None disables it.")
    grad_clip: float | None = Field(1.0, gt=0.0)
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="'auto': bf16-mixed on a GPU that supports it, else fp32.")
    t_sampling: Literal["grid", "uniform"] = Field(
        "grid", description="'grid': t drawn from linspace(0, 1, n_time_points) as in the paper.")
    n_time_points: int = Field(20, ge=2)
    t0_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of training times set to t = 0 before the "
        "draw above (flow methods). There the flow-matching loss is a regression of the "
        "posterior mean (x0 + v(0, x0, y) → E[x1 | y]), so this trains the one-call MMSE "
        "estimate that sampling.mmse = 't0' uses.")
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    val_every_n_steps: int | None = Field(
        None, ge=1, description="Validate, and write the best/last checkpoints, every N "
        "optimiser steps counted across epochs (reproducible). Takes precedence over the two "
        "below.")
    val_every_n_epochs: int | None = Field(
        None, ge=1, description="Validate and write the checkpoints at the end of every N-th "
        "epoch. Takes precedence over val_every_minutes. An epoch of a small data set can be "
        "a few steps (see data.patches_per_epoch): validating that often costs more than the "
        "training itself.")
    val_every_minutes: float | None = Field(
        5.0, gt=0, description="Validate and write the checkpoints once this much time has "
        "passed since the previous validation: the cost of validating stays a small fraction "
        "of the training whatever the epoch length, and an interruption loses at most this "
        "much training. Training also ends with a validation and checkpoints (except "
        "between the multiples of val_every_n_epochs > 1).")
    log_every_n_steps: int = Field(50, ge=1, description="Write the training loss to the CSV "
                                   "and TensorBoard logs every N optimiser steps.")
    limit_val_batches: int | float = 1.0
    progress_bar: bool = True
    calibrate: bool = Field(
        True, description="After training a stochastic method, fit the std calibration "
        "(RMSE vs RMV, see `calibrator`) on the validation images, which training never sees, "
        "and store it with the model, so that its std is calibrated without a separate "
        "`calibrate` run.")
    calibrator: CalibrationKind = Field(
        "monotone", description="How a calibration maps the std (after training and in "
        "`calibrate`): 'linear' σ_cal = a·σ + b, or 'monotone', the increasing curve through "
        "the RMSE-vs-RMV bins, which also follows the bend of a std estimated from few samples "
        "(see hazematching.calibration). Both keep the std's ranking.")
    calibration_pixels: int = Field(
        65536, ge=1024, description="Validation pixels (per plane crops, spread over the "
        "images) that the calibration after training predicts with the model's sampling "
        "settings: bounds its cost (pixels × samples × solver calls).")

    @model_validator(mode="after")
    def _some_cadence(self) -> TrainingConfig:
        if (self.val_every_n_steps, self.val_every_n_epochs, self.val_every_minutes) == (
                None, None, None):
            raise ValueError("set one of val_every_n_steps, val_every_n_epochs or "
                             "val_every_minutes: validation is what writes the checkpoints")
        return self

    @property
    def val_cadence(self) -> tuple[Literal["steps", "epochs", "minutes"], float]:
        """When validation (and checkpointing) runs: ``("steps", N)``, ``("epochs", N)`` or
        ``("minutes", M)``, the first field set in that order of precedence."""
        if self.val_every_n_steps is not None:
            return "steps", self.val_every_n_steps
        if self.val_every_n_epochs is not None:
            return "epochs", self.val_every_n_epochs
        return "minutes", float(self.val_every_minutes)  # not None: see _some_cadence


class SamplingConfig(_Strict):
    """Posterior sampling and tiled prediction.

    The defaults (``SAMPLING_PRESETS["default"]``) keep the published sampler's 50 samples,
    MMSE and std from the samples, but integrate the ODE with the midpoint rule on 10 time
    points (9 steps, 18 network calls against the published 19 Euler calls): on real-structure
    pairs a briefly trained model's Euler samples carried 0.64 of the target's fine texture and
    its midpoint samples 0.87, with the same MMSE; on a well-trained model both are within 1 %
    of the target's (README, Configuration). ``SAMPLING_PRESETS["paper"]`` is the published
    inference (19 Euler steps on 128/64 tiles), ``SAMPLING_PRESETS["fast"]`` (8 antithetic
    samples, 6 Euler steps) keeps the MMSE and the samples' texture but gives a less well
    calibrated std; ``SAMPLING_PRESETS["balanced"]`` (16 antithetic samples, 2 midpoint
    steps = 4 calls, 51–54× faster than the published inference on a CPU) passes the whole
    quality gate on a well-trained model, but a briefly trained model's few-step samples lose
    fine texture (0.49 of the target's against 0.71 with 19 Euler steps, on real structure).
    See the README's *Speed* section for the measurements.
    """

    solver: Literal["euler", "heun", "midpoint"] = Field(
        "midpoint", description="ODE solver: 'euler' (the paper's; 1 call per step), "
        "'midpoint' (2 calls per step, never evaluates t = 1) or 'heun' (2 calls per step).")
    n_time_points: int = Field(10, ge=2, description="Time points of the ODE grid: 10 with "
                               "'midpoint' = 9 steps, 18 calls (the paper: 20 points, 19 "
                               "Euler steps).")
    schedule: Literal["uniform", "late"] = Field(
        "uniform", description="Time grid: 'uniform' (the paper) or 'late' (denser near t = 1).")
    n_samples: int = Field(50, ge=1, description="Posterior samples per pixel (paper: 50).")
    mmse: Literal["samples", "t0"] = Field(
        "samples", description="How the MMSE is formed: 'samples' = mean of the ODE end points "
        "(the paper); 't0' = mean of the one-call estimates x0 + v(0, x0, y) of the same noise "
        "draws (the posterior mean at the optimum, free with every sample's first step).")
    std: Literal["samples", "t0"] = Field(
        "samples", description="Which spread is the std: 'samples' = the samples' std about their "
        "own mean (ddof 1, the paper); 't0' = their RMS deviation from the mean of the one-call "
        "estimates, which adds where samples and one-call estimate disagree.")
    std_smoothing: float = Field(
        0.0, ge=0.0, description="Gaussian σ (px) applied to the variance map before the "
        "square root; averages a few-sample variance over neighbouring pixels (0: off).")
    antithetic: bool = Field(
        False, description="Draw the noise fields in antithetic pairs (x0, −x0): the pair's "
        "mean cancels the part of the ODE map that is odd in x0, so the mean of K samples is "
        "much closer to the posterior mean; each sample is still a valid posterior sample.")
    tile_size: int = Field(256, ge=16, description="Side of the square tiles (px); smaller "
                           "images use one tile of their own size.")
    tile_overlap: int = Field(32, ge=0, description="Overlap between neighbouring tiles (px); "
                              "blended with a smooth window so that no seam shows.")
    batch_size: int | None = Field(None, ge=1, description="Network batch: (tile, sample) pairs "
                                   "per call; None: 64 on a GPU, and on a CPU as many tiles as "
                                   "make 65,536 px (one 256-px tile; bigger CPU calls cost "
                                   "more per pixel: hazematching.predict.CPU_BATCH_PIXELS).")
    seed: int | None = 0
    precision: Literal["auto", "32", "bf16"] = Field(
        "auto", description="Network arithmetic during sampling; 'auto': bf16 autocast on a GPU, "
        "fp32 on the CPU. The ODE state is always accumulated in fp32.")

    def estimator(self, n_samples: int | None = None) -> dict[str, Any]:
        """The settings that shape the std (and MMSE) estimator, with `n_samples` (default
        ``self.n_samples``) samples: what a calibration is fitted for."""
        return {"n_samples": int(n_samples or self.n_samples), "solver": self.solver,
                "n_time_points": self.n_time_points, "schedule": self.schedule,
                "antithetic": self.antithetic, "mmse": self.mmse, "std": self.std,
                "std_smoothing": self.std_smoothing}

    @model_validator(mode="after")
    def _overlap(self) -> SamplingConfig:
        if self.tile_overlap * 2 > self.tile_size:
            raise ValueError(f"tile_overlap ({self.tile_overlap}) must be at most half the "
                             f"tile_size ({self.tile_size})")
        return self


#: Named sampling settings, applied with ``Model.reconfigure(preset_overrides(name))`` or the
#: CLI's ``--preset``. "default" is the default configuration; "paper" reproduces the published
#: inference (its tiles keep the central 64 px of each 128-px tile; here the 64-px overlap is
#: blended with a ramp instead, which covers every pixel from the same tiles).
SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    "default": {"solver": "midpoint", "n_time_points": 10, "schedule": "uniform", "n_samples": 50,
                "antithetic": False, "mmse": "samples", "std": "samples", "std_smoothing": 0.0,
                "tile_size": 256, "tile_overlap": 32},
    "fast": {"solver": "euler", "n_time_points": 7, "schedule": "late", "n_samples": 8,
             "antithetic": True, "mmse": "samples", "std": "samples", "std_smoothing": 0.0,
             "tile_size": 256, "tile_overlap": 32},
    "balanced": {"solver": "midpoint", "n_time_points": 3, "schedule": "uniform", "n_samples": 16,
                 "antithetic": True, "mmse": "samples", "std": "samples", "std_smoothing": 0.0,
                 "tile_size": 256, "tile_overlap": 32},
    "paper": {"solver": "euler", "n_time_points": 20, "schedule": "uniform", "n_samples": 50,
              "antithetic": False, "mmse": "samples", "std": "samples", "std_smoothing": 0.0,
              "tile_size": 128, "tile_overlap": 64},
}


def preset_overrides(name: str) -> dict[str, Any]:
    """Dotted ``sampling.*`` overrides of the named preset (see :data:`SAMPLING_PRESETS`)."""
    try:
        preset = SAMPLING_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown sampling preset {name!r}; expected one of "
                         f"{', '.join(SAMPLING_PRESETS)}") from None
    return {f"sampling.{k}": v for k, v in preset.items()}


class ModelConfig(_Strict):
    """Everything needed to train and run one model; saved with it."""

    method: str = Field("hazematching", description="Restoration method (see `methods`).")
    method_options: dict[str, Any] = Field(default_factory=dict,
                                           description="Options specific to the method.")
    in_channels: int = Field(1, ge=1, description="Conditioning (widefield) channels.")
    data: DataConfig = Field(default_factory=DataConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="after")
    def _sizes(self) -> ModelConfig:
        d = self.network.divisor
        for name, size in (("data.patch_size", self.data.patch_size),
                           ("sampling.tile_size", self.sampling.tile_size)):
            if size % d:
                raise ValueError(f"{name}={size} must be divisible by {d} = 2**(len("
                                 f"network.channel_mult)-1) with channel_mult="
                                 f"{self.network.channel_mult}")
        for ds in self.network.attention_downsample:
            if ds > d or ds & (ds - 1):
                raise ValueError(f"network.attention_downsample contains {ds}; expected powers of "
                                 f"two no larger than {d}")
        from hazematching.methods import available_methods, get_method_class

        if self.method not in available_methods():
            raise ValueError(f"method {self.method!r} is unknown; expected one of "
                             f"{', '.join(available_methods())}")
        try:
            get_method_class(self.method).Options.model_validate(self.method_options)
        except ValidationError as err:
            bad = "; ".join(f"method_options.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                            for e in err.errors())
            raise ValueError(f"invalid options for method {self.method!r}: {bad}") from None
        fixed = get_method_class(self.method).fixed_sampling(self)
        wrong = {k: v for k, v in fixed.items() if getattr(self.sampling, k) != v}
        if wrong:
            raise ValueError(
                "this network fixes its sampling grid (" + ", ".join(
                    f"sampling.{k}={v!r}" for k, v in fixed.items()) + "), but the config "
                "sets " + ", ".join(f"sampling.{k}={getattr(self.sampling, k)!r}"
                                    for k in wrong) + "; drop those settings")
        return self

    def with_overrides(self, overrides: dict[str, Any], source: str = "overrides") -> ModelConfig:
        """A new, re-validated config with dotted-path overrides ({'training.epochs': 5}).

        None values are skipped, so optional command-line options can be passed straight in.
        """
        raw = self.model_dump(mode="json")
        for key, value in overrides.items():
            if value is None:
                continue
            node = raw
            *parents, leaf = key.split(".")
            for p in parents:
                if not isinstance(node.get(p), dict):
                    raise ValueError(f"{source}: unknown config section {p!r} in {key!r}")
                node = node[p]
            if leaf not in node and node is not raw.get("method_options"):
                raise ValueError(f"{source}: unknown config field {key!r}")
            node[leaf] = value
        return ModelConfig.from_dict(raw, source=source)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise to YAML (and write it to `path` if given)."""
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            from hazematching.io import atomic_write_text

            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        """Read and validate a YAML file; errors name the file and the offending field."""
        return cls.from_dict(read_yaml(path), source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> ModelConfig:
        """Validate a nested dict; a :class:`ConfigError` lists every bad field by its path."""
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(source, err) from None


class ConfigError(ValueError):
    """An invalid configuration; the message names each offending field."""

    def __init__(self, source: str, err: ValidationError):
        lines = [f"{source}: invalid configuration"]
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            got = f" (got {e.get('input')!r})" if loc else ""
            lines.append(f"  - {loc or 'config'}: {e['msg']}{got}")
        super().__init__("\n".join(lines))
