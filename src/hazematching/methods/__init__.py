"""Restoration methods on one shared interface (:class:`~hazematching.methods.base.Method`).

Add a method: write a module here with a :class:`Method` subclass decorated by
:func:`register`, and list the module in ``_MODULES``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from hazematching.methods.base import Method

if TYPE_CHECKING:
    from hazematching.config import ModelConfig

_MODULES = ("hazematching", "regression", "rcan", "gan", "indi", "sifm", "richardson_lucy")
_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(f"hazematching.methods.{mod}")


def available_methods() -> list[str]:
    """Names accepted by ``ModelConfig.method``."""
    _load_all()
    return sorted(_REGISTRY)


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


__all__ = ["Method", "available_methods", "build_method", "get_method_class", "register"]
