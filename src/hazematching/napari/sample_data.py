"""napari sample data: a simulated widefield/confocal pair, so the plugin can be tried on no data."""

from __future__ import annotations

from typing import Any

from hazematching.data.synthetic import SyntheticConfig, simulate_pairs
from hazematching.napari.core import LayerData

#: Side of the simulated images (px): two 128-px training patches plus a validation strip.
SAMPLE_SIZE = 256
SAMPLE_SEED = 0


def simulated_pair() -> list[LayerData]:
    """One 256×256 pair from the built-in simulator (:mod:`hazematching.data.synthetic`, default
    optics: 60×/1.4 oil, 0.1 µm pixels, structures throughout an 8 µm deep volume).

    Returns:
        Layer-data tuples: the confocal target and the widefield input, float32 camera ADU,
        scaled in µm, the simulation settings in ``metadata["hazematching"]``.
    """
    config = SyntheticConfig(size=SAMPLE_SIZE)
    target, widefield = simulate_pairs(1, seed=SAMPLE_SEED, config=config)
    common: dict[str, Any] = {
        "scale": (config.pixel_size_um,) * 2, "units": ("µm", "µm"),
        "metadata": {"hazematching": {"simulation": config.model_dump(mode="json"),
                                      "seed": SAMPLE_SEED}}}
    return [(target[0], {"name": "confocal (simulated)", "visible": False, **common}, "image"),
            (widefield[0], {"name": "widefield (simulated)", **common}, "image")]
