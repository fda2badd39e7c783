"""The bundled architecture source: one file with our definitions and no import of our own."""

from __future__ import annotations

import ast
import importlib.util
import sys

import pytest
import torch

from hazematching.bmz.bundle import bundle_source
from hazematching.bmz.network import BMZNetwork


def test_bundle_defines_the_network_without_our_package(tmp_path):
    source = bundle_source(docstring="test bundle")
    tree = ast.parse(source)
    assert ast.get_docstring(tree) == "test bundle"
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and (n.module or "").startswith("hazematching")]
    path = tmp_path / "bundled.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("bundled_bmz", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bundled_bmz"] = module  # pydantic resolves annotations through it
    try:
        spec.loader.exec_module(module)
        kwargs = {"method": "hazematching", "in_channels": 1, "n_samples": 2,
                  "network": {"model_channels": 8, "channel_mult": [1, 2],
                              "attention_downsample": [2]}}
        ours, theirs = BMZNetwork(**kwargs), module.BMZNetwork(**kwargs)
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(1, 1, 16, 16)
        with torch.no_grad():
            for a, b in zip(ours(x), theirs(x), strict=True):
                assert torch.equal(a, b)
    finally:
        del sys.modules["bundled_bmz"]


@pytest.mark.parametrize("parts,match", [
    ([("hazematching.bmz.network", None)],
     ("uses Calibration, NetworkConfig, NoiseField, TileMoments, UNet, default_batch_size, get_solver, "
      "noise_tile, smooth_variance, time_grid from hazematching but no part defines")),
    ([("hazematching.config", ("NoSuchThing",))], "hazematching.config defines no NoSuchThing"),
    ([("hazematching.sampling", None), ("hazematching.sampling", None)], "both define"),
])
def test_bundle_refuses_incomplete_or_clashing_parts(parts, match):
    with pytest.raises(ValueError, match=match):
        bundle_source(parts)
