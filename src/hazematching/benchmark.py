"""The benchmark runner: train (or load) every listed method on one dataset under one budget,
calibrate, predict the test split, evaluate, and write one report.

The budget (:class:`Budget`) counts optimiser steps or training samples — the same work for every
method on any machine, so that scores can be ranked — and/or wall-clock minutes, shared by all
methods or set per method. ``seeds`` trains a method once per seed, to measure the spread.

Every step goes through the public machinery (``Model.fit``, ``Model.calibrate``,
``Model.predict_file``, ``metrics.evaluate_folders``, ``report.render_report``), so a method
added to :mod:`hazematching.methods` is benchmarked with no change here. The run is resumable:
a finished model, prediction or result is reused, not recomputed.

Output layout::

    OUT/models/<label>/         model directories (an entry with `model` saves its
                                reconfigured copy here)
    OUT/predictions/<label>/    <stem>_mmse.tif, <stem>_std.tif, <stem>_samples.tif
    OUT/results/<label>/        results.json (+ gallery.npz)
    OUT/report/                 report.html, tables/, figures/
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hazematching.api import Model, load_model
from hazematching.config import ConfigError, ModelConfig, read_yaml
from hazematching.data.pairs import resolve_split_dirs
from hazematching.io import list_images, read_image, write_tiff
from hazematching.methods import build_method, get_method_class

#: The epoch limit while a budget applies: large enough that its steps or minutes stop first.
_UNBOUNDED_EPOCHS = 1_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def optimizer_steps_per_batch(config: ModelConfig) -> int:
    """Lightning's global steps per training batch: one per optimiser the method steps (two for
    the GAN's generator and critic, which Lightning counts separately)."""
    if not get_method_class(config.method).manual_optimization:
        return 1
    optimizers = build_method(config).configure_optimizers()
    return len(optimizers) if isinstance(optimizers, list | tuple) else 1


class Budget(_Strict):
    """How long a method trains: a count (steps or samples) and/or minutes; training stops at
    whichever limit comes first. An empty budget leaves the config's ``training.epochs`` in
    charge; a non-empty one replaces it."""

    steps: int | None = Field(None, ge=1, description="Training batches, each one update of "
                              "every optimiser of the method (a GAN: generator and critic).")
    samples: int | None = Field(None, ge=1, description="Training patches seen (per device): "
                                "steps = ceil(samples / training.batch_size).")
    minutes: float | None = Field(None, gt=0, description="Wall-clock limit of the training.")

    @model_validator(mode="after")
    def _one_count(self) -> Budget:
        if self.steps is not None and self.samples is not None:
            raise ValueError("give steps or samples, not both")
        return self

    def over(self, shared: Budget) -> Budget:
        """This (per-method) budget, with the limits it leaves unset taken from `shared`."""
        counted = self.steps is not None or self.samples is not None
        return Budget(steps=self.steps if counted else shared.steps,
                      samples=self.samples if counted else shared.samples,
                      minutes=shared.minutes if self.minutes is None else self.minutes)

    def overrides(self, config: ModelConfig) -> dict[str, Any]:
        """The training fields that enforce this budget on `config` (none if it is empty)."""
        steps = (math.ceil(self.samples / config.training.batch_size)
                 if self.samples is not None else self.steps)
        if steps is None and self.minutes is None:
            return {}
        return {"training.epochs": _UNBOUNDED_EPOCHS, "training.max_minutes": self.minutes,
                "training.max_steps": None if steps is None
                else steps * optimizer_steps_per_batch(config)}


class MethodEntry(_Strict):
    """One method to benchmark."""

    method: str
    label: str | None = Field(None, description="Name in tables (default: the method).")
    config: Path | None = Field(None, description="YAML ModelConfig to start from.")
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted config overrides; "
                                "with `model`, inference settings applied to the loaded model.")
    model: Path | None = Field(None, description="A trained model to load instead of training.")
    budget: Budget | None = Field(None, description="This method's budget; the limits it "
                                  "leaves unset come from the shared one.")
    seeds: list[int] = Field(default_factory=list, description="Train once per seed "
                             "(training.seed, which also draws the initial weights), labelled "
                             "'LABEL (seed N)'.")

    @property
    def name(self) -> str:
        return self.label or self.method


class EvaluationSettings(_Strict):
    metrics: list[str] | None = None
    n_samples: int = Field(16, ge=1, description="Posterior samples per test image.")
    max_perceptual_samples: int = Field(5, ge=1)
    weights_dir: Path | None = None
    pixel_size_um: float | None = None


class BenchmarkConfig(_Strict):
    """A benchmark: one dataset, a training budget shared by all methods, the methods."""

    dataset: Path = Field(description="Dataset root with train/ (or train_crop/), val/ and "
                                      "test/ in the paper layout.")
    name: str | None = Field(None, description="Dataset label (default: folder name).")
    preset: str | None = Field(None, description="A published dataset preset whose "
                                                 "defaults (patch size, normalisation, test "
                                                 "crop) every method starts from.")
    out: Path
    budget: Budget = Field(default_factory=Budget, description="The training budget of every "
                           "method (per method: `budget` of its entry).")
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted config overrides "
                                "applied to every method before its own `set`.")
    calibrate: bool = True
    methods: list[MethodEntry]
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)

    @model_validator(mode="before")
    @classmethod
    def _budget_is_not_overrides(cls, data: Any) -> Any:
        budget = data.get("budget") if isinstance(data, dict) else None
        if isinstance(budget, dict) and any("." in str(k) for k in budget):
            raise ValueError("budget takes steps, samples and minutes; put config overrides for "
                             "every method (e.g. training.lr) under `set`")
        return data

    @model_validator(mode="after")
    def _expand_seeds_and_check_labels(self) -> BenchmarkConfig:
        methods: list[MethodEntry] = []
        for m in self.methods:
            if m.seeds and m.model is not None:
                raise ValueError(f"methods: {m.name!r} loads a trained model, so it has no "
                                 f"training seeds")
            methods += [m.model_copy(update={"label": f"{m.name} (seed {seed})", "seeds": [],
                                             "set": {**m.set, "training.seed": seed}})
                        for seed in m.seeds] or [m]
        self.methods = methods
        names = [m.name for m in self.methods]
        if not names:
            raise ValueError("methods: list at least one method")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"methods: labels must be unique, repeated: {', '.join(dup)}")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> BenchmarkConfig:
        """Read a benchmark YAML; relative paths are taken relative to the file."""
        path = Path(path)
        try:
            cfg = cls.model_validate(read_yaml(path, "benchmark config"))
        except ValidationError as err:
            raise ConfigError(str(path), err) from None
        base = path.parent
        fix = lambda p: p if p is None or p.is_absolute() else base / p  # noqa: E731
        cfg.dataset, cfg.out = fix(cfg.dataset), fix(cfg.out)
        for m in cfg.methods:
            m.config, m.model = fix(m.config), fix(m.model)
        return cfg


def entry_config(bench: BenchmarkConfig, entry: MethodEntry) -> ModelConfig:
    """The config `entry` trains with: its start config, the shared then its own overrides, and
    the training limits of its budget."""
    if entry.config is not None:
        base = ModelConfig.from_yaml(entry.config)
    elif bench.preset is not None:
        from hazematching.data.datasets import preset_config

        base = preset_config(bench.preset)
    else:
        base = ModelConfig()
    config = base.with_overrides({"method": entry.method, **bench.set, **entry.set},
                                 source=f"benchmark method {entry.name!r}")
    budget = (entry.budget or Budget()).over(bench.budget)
    # The benchmark calibrates every model itself, on the whole validation folder and with its
    # evaluation's samples per pixel: the calibration `fit` does by default would be redone.
    limits = {**budget.overrides(config),
              **({"training.calibrate": False} if bench.calibrate else {})}
    return config.with_overrides(limits, source=f"benchmark budget of {entry.name!r}")


def _test_dir(bench: BenchmarkConfig, test: Path) -> Path:
    """The test folder, centre-cropped where the dataset's preset says the paper did."""
    if bench.preset is None:
        return test
    from hazematching.data.datasets import crop_test_image, get_preset

    preset = get_preset(bench.preset)
    if not preset.test_crop:
        return test
    cropped = bench.out / "test_cropped"
    for f in list_images(test):
        if not (cropped / f.name).exists():
            img, axes = read_image(f)
            write_tiff(cropped / f.name, crop_test_image(img, preset, axes), axes)
    return cropped


def _log(msg: str) -> None:
    from hazematching.cli.common import console

    console.print(f"[bold]benchmark[/] {msg}", highlight=False)


def run_benchmark(bench: BenchmarkConfig, *, device: str = "auto") -> Path:
    """Run every method of `bench` and write the report; returns the report's HTML path."""
    from hazematching.metrics.evaluate import RESULTS_FILE, evaluate_folders
    from hazematching.report import render_report

    train_dir, val_dir = resolve_split_dirs(bench.dataset)
    test = bench.dataset / "test"
    if val_dir is None or not test.is_dir():
        raise ValueError(f"{bench.dataset}: a benchmark needs train/ (or train_crop/), val/ "
                         f"(or val_crop/) and test/ folders")
    test = _test_dir(bench, test)
    dataset = bench.name or bench.dataset.name
    ev = bench.evaluation
    results: list[Path] = []
    for entry in bench.methods:
        label = entry.name
        model_dir = bench.out / "models" / label
        t0 = time.perf_counter()
        if (model_dir / "model.json").exists():
            model = load_model(model_dir)
            _log(f"{label}: reusing the trained model in {model_dir}")
        elif entry.model is not None:
            # A trained model evaluated with other inference settings (e.g. InDI's steps or
            # SIFM's inference noise), saved as this entry's own model: its calibration is
            # fitted for these settings and the original model stays as it was.
            model = load_model(entry.model).reconfigure(entry.set)
            model.calibration = None
            model.save(model_dir)
        else:
            config = entry_config(bench, entry)
            t = config.training
            _log(f"{label}: training (max_steps {t.max_steps}, max_minutes {t.max_minutes})")
            model = Model(config).fit(train_dir, val_dir, out_dir=model_dir)
            if model.training_summary:
                _log(f"{label}: trained {model.training_summary['steps']} optimiser steps, "
                     f"{model.training_summary['epochs']} epochs")
        if bench.calibrate and model.method.stochastic and model.calibration is None:
            _log(f"{label}: calibrating on {val_dir}")
            model.calibrate(val_dir, n_samples=ev.n_samples, device=device,
                            plot=bench.out / "models" / f"{label}_calibration.png",
                            save=model.path is not None)
        pred_dir = bench.out / "predictions" / label
        for f in list_images(test):
            if not (pred_dir / f"{f.name.split('.')[0]}_mmse.tif").exists():
                _, axes = read_image(f)
                model.predict_file(f, pred_dir, channels=[1] if "C" in axes else None,
                                   n_samples=ev.n_samples, save_samples=True, device=device)
        res_dir = bench.out / "results" / label
        if not (res_dir / RESULTS_FILE).exists():
            _log(f"{label}: evaluating")
            evaluate_folders(pred_dir, test, out_dir=res_dir, fid_reference=train_dir,
                             dataset=dataset, method=label,
                             **({"metrics": ev.metrics} if ev.metrics else {}),
                             weights_dir=ev.weights_dir, pixel_size_um=ev.pixel_size_um,
                             max_perceptual_samples=ev.max_perceptual_samples)
        results.append(res_dir / RESULTS_FILE)
        _log(f"{label}: done in {time.perf_counter() - t0:.0f} s")
    return render_report(results, bench.out / "report", title=f"Benchmark: {dataset}")


def summary_table(report_dir: Path) -> str:
    """The Markdown table(s) the report wrote, for printing."""
    tables = sorted((report_dir / "tables").glob("*.md"))
    return "\n\n".join(t.read_text() for t in tables) if tables else ""


__all__ = ["BenchmarkConfig", "Budget", "MethodEntry", "entry_config",
           "optimizer_steps_per_batch", "run_benchmark", "summary_table"]
