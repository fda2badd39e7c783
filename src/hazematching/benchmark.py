"""The benchmark runner: train (or load) every listed method on one dataset under one budget,
calibrate, predict the test split, evaluate, and write one report.

Every step goes through the public machinery (``Model.fit``, ``Model.calibrate``,
``Model.predict_file``, ``metrics.evaluate_folders``, ``report.render_report``), so a method
added to :mod:`hazematching.methods` is benchmarked with no change here. The run is resumable:
a finished model, prediction or result is reused, not recomputed.

Output layout::

    OUT/models/<label>/         model directories
    OUT/predictions/<label>/    <stem>_mmse.tif, <stem>_std.tif, <stem>_samples.tif
    OUT/results/<label>/        results.json (+ gallery.npz)
    OUT/report/                 report.html, tables/, figures/
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hazematching.api import Model, load_model
from hazematching.config import ConfigError, ModelConfig, read_yaml
from hazematching.data.pairs import resolve_split_dirs
from hazematching.io import list_images, read_image, write_tiff


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodEntry(_Strict):
    """One method to benchmark."""

    method: str
    label: str | None = Field(None, description="Name in tables (default: the method).")
    config: Path | None = Field(None, description="YAML ModelConfig to start from.")
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted config overrides; "
                                "with `model`, inference settings applied to the loaded model.")
    model: Path | None = Field(None, description="A trained model to load instead of training.")

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
    budget: dict[str, Any] = Field(default_factory=dict, description="Training overrides "
                                   "applied to every method, e.g. training.max_minutes: 10.")
    calibrate: bool = True
    methods: list[MethodEntry]
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)

    @model_validator(mode="after")
    def _unique(self) -> BenchmarkConfig:
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


def _start_config(bench: BenchmarkConfig, entry: MethodEntry) -> ModelConfig:
    if entry.config is not None:
        base = ModelConfig.from_yaml(entry.config)
    elif bench.preset is not None:
        from hazematching.data.datasets import preset_config

        base = preset_config(bench.preset)
    else:
        base = ModelConfig()
    return base.with_overrides({"method": entry.method, **bench.budget, **entry.set},
                               source=f"benchmark method {entry.name!r}")


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
        if entry.model is not None:
            # A trained model evaluated with other inference settings (e.g. InDI's steps).
            model = load_model(entry.model).reconfigure(entry.set)
        elif (model_dir / "model.json").exists():
            model = load_model(model_dir)
            _log(f"{label}: reusing the trained model in {model_dir}")
        else:
            _log(f"{label}: training")
            model = Model(_start_config(bench, entry)).fit(train_dir, val_dir, out_dir=model_dir)
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


__all__ = ["BenchmarkConfig", "MethodEntry", "run_benchmark", "summary_table"]
