"""Restoration methods on one shared interface (:class:`~hazematching.methods.base.Method`).

Add a method: write a module here, named like the method, with a :class:`Method` subclass
decorated by :func:`register`, and list it with a one-line description in :data:`BUILTIN`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from hazematching.methods.base import Method

if TYPE_CHECKING:
    from hazematching.config import ModelConfig

#: The built-in methods, each registered by the module of its name: name → one-line
#: description (shown by ``hazematching train --help``).
BUILTIN: dict[str, str] = {
    "hazematching": "HazeMatching: guided conditional flow matching, samples",
    "regression": "U-Net regression (CARE), L1 loss",
    "rcan": "RCAN: residual channel-attention network, L1 loss",
    "gan": "ESRGAN: RRDB generator + relativistic PatchGAN critic",
    "mimo_unet": "MIMO-UNet: multi-scale U-Net, multi-scale L1 + FFT loss",
    "mprnet": "MPRNet: 3 supervised stages (quarters, halves, image)",
    "restormer": "Restormer: transposed-attention transformer, L1 loss",
    "indi": "InDI: N steps from the widefield image (N = 1 or 20)",
    "sifm": "SIFM: flow from widefield + noise σ (0|0, 0|0.1, 0.1|0.1)",
    "lvae": "LVAE: conditional ladder VAE (HDN/μSplit), samples",
    "richardson_lucy": "background subtraction + Richardson–Lucy, not learned",
}
_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in BUILTIN:
        importlib.import_module(f"hazematching.methods.{mod}")


def available_methods() -> list[str]:
    """Names accepted by ``ModelConfig.method``."""
    _load_all()
    return sorted(_REGISTRY)


def method_summaries() -> dict[str, str]:
    """One line per registered method: :data:`BUILTIN`'s description, else (methods registered
    from elsewhere) the first line of the class docstring."""
    _load_all()
    order = [*BUILTIN, *sorted(set(_REGISTRY) - set(BUILTIN))]
    return {n: BUILTIN.get(n) or (_REGISTRY[n].__doc__ or "").strip().split("\n")[0]
            for n in order}


def get_method_class(name: str) -> type[Method]:
    """The :class:`Method` subclass registered under `name`."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; expected one of "
                         f"{', '.join(sorted(_REGISTRY))}") from None


def build_method(config: ModelConfig) -> Method:
    """Instantiate the method named by ``config.method``."""
    return get_method_class(config.method)(config)


__all__ = ["BUILTIN", "Method", "available_methods", "build_method", "get_method_class",
           "method_summaries", "register"]
