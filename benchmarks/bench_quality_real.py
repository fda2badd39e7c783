"""Quality on real fluorescence structure (issue 12), in one command: simulate, train, score.

1. ``hazematching simulate real``: microsim widefield/confocal pairs whose ground truth is real
   fluorescence structure shipped with hazematching (2-D nuclei, BBBC038v1, CC0; 3-D
   epithelial membranes, EpiTools, BSD-3), split into train/val/test by image region.
2. ``hazematching benchmark`` with ``benchmarks/configs/quality_real.yaml``: every method is
   trained through the same machinery as ``hazematching train`` (defaults, 64-px patches) for
   the same number of optimiser steps and/or minutes, the stochastic ones are calibrated on the
   validation region, and all predict the test region and are scored with the project's metrics
   (``hazematching.metrics.evaluate``).
3. A focused table: range-invariant PSNR, MS-SSIM and MicroMS3IM (fidelity), high-frequency
   power ratio (0.15–0.45 cycles/px, → 1) and FRC resolution (texture), and for methods with
   an uncertainty, the calibrated std's ENCE and Spearman correlation with |error|; as Markdown
   (``WORK/quality_real.md``, also printed) and JSON (``WORK/quality_real.json``). The full
   report (every metric, plots, HTML) is in ``WORK/bench/report``.

Usage:
    python benchmarks/bench_quality_real.py --work runs/quality_real            # config budget
    python benchmarks/bench_quality_real.py --work runs/qr --steps 500 --minutes 20
    python benchmarks/bench_quality_real.py --work runs/qr_smoke --quick         # minutes

Every stage is cached in --work (the dataset, each trained model, prediction and result), so an
interrupted run resumes; use a new --work for another budget or dataset size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from hazematching.benchmark import BenchmarkConfig
from hazematching.config import read_yaml
from hazematching.io import atomic_write_text
from hazematching.metrics.evaluate import RESULTS_FILE
from hazematching.report.tables import (
    METRIC_INFO,
    UNCERTAINTY_INFO,
    row_label,
    table_data,
    to_markdown,
    unavailable_notes,
    uncertainty_data,
)

CONFIG = Path(__file__).parent / "configs" / "quality_real.yaml"
COLUMNS = ("ri_psnr", "ms_ssim", "micro_ms3im", "power_ratio", "frc_resolution_um")
UNCERTAINTY = ("ence", "spearman_std_abs_error")
#: Dataset and evaluation sizes: the full run, and a smoke run that only proves the pipeline.
MODES: dict[str, dict[str, Any]] = {
    "full": {"n": 160, "size": 128, "eval_size": 192, "depth": 32, "n_samples": 16},
    "quick": {"n": 10, "size": 64, "eval_size": 176, "depth": 16, "n_samples": 2, "steps": 2},
}


def hazematching(*args: str | Path) -> None:
    """Run a ``hazematching`` command in a child process (the CLI a user runs); fail loudly."""
    command = [sys.executable, "-c", "from hazematching.cli import app; "
               "app(prog_name='hazematching')", *(str(a) for a in args)]
    print("$ hazematching " + " ".join(str(a) for a in args), flush=True)
    subprocess.run(command, check=True)


def simulate(data: Path, mode: dict[str, Any], seed: int) -> None:
    """Stage 1: the dataset, unless WORK/data already holds one."""
    if (data / "simulation.yaml").exists():
        print(f"reusing the dataset in {data}")
        return
    hazematching("simulate", "real", "--out", data, "--n", mode["n"], "--size", mode["size"],
                 "--eval-size", mode["eval_size"], "--depth", mode["depth"], "--seed", seed)


def benchmark_config(work: Path, mode: dict[str, Any], args: argparse.Namespace) -> Path:
    """The shipped config with this run's dataset, output folder, budget and methods."""
    fields = read_yaml(CONFIG, "benchmark config")
    out = work / "bench"
    fields["dataset"], fields["out"] = str((work / "data").resolve()), str(out.resolve())
    budget = dict(fields.get("budget") or {})
    steps = args.steps if args.steps is not None else mode.get("steps")
    if steps is not None or args.minutes is not None:
        budget = {"steps": steps, "minutes": args.minutes}
    fields["budget"] = {k: v for k, v in budget.items() if v is not None}
    fields["evaluation"] = {**fields.get("evaluation", {}), "n_samples": mode["n_samples"]}
    methods = fields["methods"]
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        labels = [m.get("label", m["method"]) for m in methods]
        unknown = sorted(set(wanted) - set(labels))
        if unknown:
            sys.exit(f"--methods: unknown label(s) {unknown}; choose from {labels}")
        methods = [m for m, label in zip(methods, labels, strict=True) if label in wanted]
    for m in methods:
        if "model" in m:  # an entry that re-uses a model trained earlier in this run
            m["model"] = str((out / "models" / Path(m["model"]).name).resolve())
    fields["methods"] = methods
    path = work / "benchmark.yaml"
    atomic_write_text(path, yaml.safe_dump(fields, sort_keys=False, allow_unicode=True))
    BenchmarkConfig.from_yaml(path)  # invalid settings fail here, before any training
    return path


def summarise(work: Path, config: Path, seconds: float) -> str:
    """Stage 3: the focused table from the benchmark's results, as Markdown and JSON."""
    bench = BenchmarkConfig.from_yaml(config)
    results = [json.loads((bench.out / "results" / m.name / RESULTS_FILE).read_text())
               for m in bench.methods]
    dataset = str(results[0]["dataset"])
    rows = table_data(results)[dataset]
    for method, values in uncertainty_data(results).get(dataset, {}).items():
        rows.setdefault(row_label(method, "mmse"), {}).update(values)
    info = {k: METRIC_INFO[k] for k in COLUMNS} | {k: UNCERTAINTY_INFO[k] for k in UNCERTAINTY}
    rows = {label: {k: v.get(k) for k in info} for label, v in rows.items()}
    notes = [n for n in unavailable_notes(results).get(dataset, [])
             if n.split(" — ")[0] in {*COLUMNS, "frc", "uncertainty"}]
    simulation = read_yaml(bench.dataset / "simulation.yaml", "simulation parameters")
    table = to_markdown(rows, info, notes)
    header = (f"Real structure ({', '.join(simulation['sources'])}): {simulation['splits']} "
              f"pairs; budget {bench.budget.model_dump(exclude_none=True)} per method; "
              f"{bench.evaluation.n_samples} samples per test image; {seconds / 60:.1f} min.\n\n")
    atomic_write_text(work / "quality_real.md", header + table)
    atomic_write_text(work / "quality_real.json", json.dumps({
        "budget": bench.budget.model_dump(exclude_none=True),
        "n_samples": bench.evaluation.n_samples, "splits": simulation["splits"],
        "sources": simulation["sources"], "simulation": simulation["config"],
        "minutes": round(seconds / 60, 2), "rows": rows, "not_available": notes}, indent=2))
    return header + table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for every stage.")
    parser.add_argument("--quick", action="store_true", help="A smoke run: 10 small pairs, "
                        "2 steps per method, 2 samples per test image (minutes).")
    parser.add_argument("--steps", type=int, help="Optimiser steps per method (default: the "
                        "config's, 2 with --quick).")
    parser.add_argument("--minutes", type=float, help="Wall-clock limit per method's training.")
    parser.add_argument("--methods", help="Comma-separated labels to run (default: all in "
                        f"{CONFIG.name}).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the simulated dataset.")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "full"]
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    simulate(args.work / "data", mode, args.seed)
    config = benchmark_config(args.work, mode, args)
    hazematching("benchmark", config, "--device", args.device)
    print(summarise(args.work, config, time.perf_counter() - started))


if __name__ == "__main__":
    main()
