"""Fixtures for the BMZ tests: a tiny trained and calibrated HazeMatching model, an untrained
regression model, their packages, and a guard that records any attempt to reach the network."""

from __future__ import annotations

import io
import socket
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import make_pairs

from hazematching import HazeMatching, Model, ModelConfig
from hazematching.bmz import export_bmz
from hazematching.data.normalization import Normalizer

WIDEFIELD = make_pairs(1, seed=7).inputs[0][0, 0]


def tiny_config(**overrides: object) -> ModelConfig:
    from conftest import TINY

    return ModelConfig.from_dict(TINY).with_overrides({"training.epochs": 1, **overrides})


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """HazeMatching trained for one epoch and calibrated; saved in ``trained.path``."""
    model = HazeMatching(tiny_config()).fit(make_pairs(3), make_pairs(2, seed=5),
                                            out_dir=tmp_path_factory.mktemp("trained"))
    model.calibrate(make_pairs(2, seed=6), device="cpu")
    return model


@pytest.fixture(scope="session")
def regression(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """An untrained (but normalised) deterministic U-Net regression model, saved."""
    pairs = make_pairs(2)
    model = Model(tiny_config(method="regression"),
                  normalizer=Normalizer.fit(pairs.targets, pairs.inputs))
    model.save(tmp_path_factory.mktemp("regression"))
    return model


@pytest.fixture(scope="session")
def package(trained: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The calibrated model's package, 2 posterior samples per block (cheap to test)."""
    out = tmp_path_factory.mktemp("pkg") / "hazematching.zip"
    return export_bmz(trained, out, image=WIDEFIELD, n_samples=2).path


@pytest.fixture(scope="session")
def regression_package(regression: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pkg") / "regression.zip"
    return export_bmz(regression, out, image=WIDEFIELD).path


@pytest.fixture
def network_attempts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every host name resolved or address connected to while the test runs (each attempt
    fails): the test asserts the list is empty."""
    attempts: list[str] = []

    def refuse(kind: str):
        def blocked(*args: object, **kwargs: object) -> None:
            target = args[1] if kind == "connect" else args[0]
            attempts.append(f"{kind} {target}")
            raise OSError(f"network access in a test: {kind} {target}")

        return blocked

    monkeypatch.setattr(socket, "getaddrinfo", refuse("resolve"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    yield attempts


class PackageFiles:
    """Read the files of a package (.zip): its description, raw members, .npy tensors."""

    def __init__(self, path: Path):
        self.path = path

    def member(self, name: str) -> bytes:
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(name)

    @property
    def rdf(self) -> dict:
        """The package's rdf.yaml (or bioimageio.yaml) as plain data."""
        from ruyaml import YAML

        with zipfile.ZipFile(self.path) as zf:
            name = next(n for n in zf.namelist() if n in ("rdf.yaml", "bioimageio.yaml"))
        return YAML(typ="safe").load(self.member(name))

    def npy(self, name: str) -> np.ndarray:
        return np.load(io.BytesIO(self.member(name)))


@pytest.fixture(scope="session")
def files() -> type[PackageFiles]:
    """``files(path)``: a :class:`PackageFiles` reader."""
    return PackageFiles


@pytest.fixture(scope="session")
def widefield() -> np.ndarray:
    """A 48×48 raw widefield image; a package's test input is its central 32×32 tile."""
    return WIDEFIELD


@pytest.fixture(scope="session")
def config() -> Callable[..., ModelConfig]:
    """``config(**dotted_overrides)``: the tiny test config, one epoch."""
    return tiny_config
