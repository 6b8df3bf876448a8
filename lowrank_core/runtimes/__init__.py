"""The runtimes a variant is measured in, one module each.

Every module of this package that defines ``RUNTIME`` (a
:class:`~lowrank_core.runtimes.base.Runtime`) is a runtime: the engine, the
CLI, the bench and the pages iterate :data:`REGISTRY`, so adding a runtime is
adding one module here. The first is the product's own path (the reference
every figure is measured on); the others are measured beside it, each with
its own accuracy (an int8 runtime rounds activations too) and latency.
"""

from __future__ import annotations

import importlib
import pkgutil

from lowrank_core.errors import ConfigError
from lowrank_core.runtimes.base import Runtime, StoredVariant

__all__ = ["REGISTRY", "PRODUCT", "Runtime", "StoredVariant", "get", "available"]


def _discover() -> dict[str, Runtime]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "records"):  # the interface and the records' helpers, not runtimes
            runtime = getattr(importlib.import_module(f"{__name__}.{info.name}"), "RUNTIME", None)
            if isinstance(runtime, Runtime):
                found.append(runtime)
    return {r.name: r for r in sorted(found, key=lambda r: (r.order, r.name))}


REGISTRY: dict[str, Runtime] = _discover()
PRODUCT: str = next(iter(REGISTRY))  # the product's own path: the reference runtime


def get(name: str) -> Runtime:
    """The runtime called ``name``, or a :class:`ConfigError` listing them."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown runtime {name!r}; choose one of {', '.join(REGISTRY)}") from None


def available() -> tuple[str, ...]:
    """The runtimes that can run here (their packages installed)."""
    return tuple(name for name, runtime in REGISTRY.items() if runtime.missing() is None)


def require(name: str) -> Runtime:
    """The runtime ``name`` if it can run here, else a one-line :class:`ConfigError` saying how to install it."""
    runtime = get(name)
    if (why := runtime.missing()) is not None:
        raise ConfigError(f"runtime {name!r} cannot run here: {why}")
    return runtime
