"""The catalogue of built-in methods: registration, descriptions, the `train --help` list."""

from typer.testing import CliRunner

from hazematching.cli import app
from hazematching.methods import BUILTIN, available_methods, get_method_class, method_summaries


def test_every_builtin_module_registers_its_method() -> None:
    for name in BUILTIN:
        cls = get_method_class(name)
        assert cls.name == name and cls.__module__ == f"hazematching.methods.{name}"
    assert set(BUILTIN) <= set(available_methods())


def test_the_paper_comparison_is_complete() -> None:
    # HazeMatching and its 12 learned baselines (InDI with 1 and 20 steps and SIFM's three σ
    # variants are options of one method each), and Richardson–Lucy for the commercial
    # deconvolution.
    assert {"hazematching", "regression", "rcan", "gan", "mimo_unet", "mprnet", "restormer",
            "indi", "sifm", "lvae", "richardson_lucy"} <= set(BUILTIN)
    stochastic = {n for n in BUILTIN if get_method_class(n).stochastic}
    assert {"hazematching", "lvae"} <= stochastic


def test_train_help_lists_every_method_with_its_description() -> None:
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0
    lines = res.output.splitlines()
    for name, text in method_summaries().items():
        if name in BUILTIN:
            assert any(name in line and text in line for line in lines), name


def test_the_readme_lists_every_method() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert all(f"| `{name}` |" in readme for name in BUILTIN)
