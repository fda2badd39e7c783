"""hazematching: dehazing widefield fluorescence microscopy with guided conditional flow matching.

The pipeline, top to bottom: :mod:`hazematching.data` (paired images, normalisation, patches,
tiling, simulation, downloads) → :mod:`hazematching.nets` (pure networks) →
:mod:`hazematching.methods` (training objective + prediction per method) →
:mod:`hazematching.training` (one Lightning loop for every method) →
:mod:`hazematching.sampling` (ODE solvers, streaming statistics) →
:mod:`hazematching.predict` (tiled prediction of arrays and files) →
:mod:`hazematching.calibration` → :mod:`hazematching.metrics` → :mod:`hazematching.report`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hazematching")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from hazematching.api import HazeMatching, Model, load_model  # noqa: E402
from hazematching.config import ModelConfig  # noqa: E402

__all__ = ["HazeMatching", "Model", "ModelConfig", "load_model", "__version__"]
