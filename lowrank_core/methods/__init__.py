"""The compression methods, one module each, and variants built from them.

Every module of this package that defines ``METHOD`` (a
:class:`~lowrank_core.methods.base.Method`) is a method: the engine, the CLI,
the report and the app iterate :data:`REGISTRY`, so adding a method is adding
one module here (plus, if it wants one, its page).

A :class:`Variant` is a pipeline of (method, config) steps with optional
fine-tuning, e.g. SVD ranks then int8 storage, or structured pruning then
SVD. It is keyed by all its steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import pkgutil
from typing import Any, Mapping

import numpy as np

from lowrank_core import model
from lowrank_core.errors import ConfigError
from lowrank_core.finetune import FinetuneConfig
from lowrank_core.methods.base import BuildContext, Method, config_dict

__all__ = [
    "REGISTRY",
    "REFERENCE",
    "Method",
    "BuildContext",
    "Variant",
    "build_variant",
    "get",
    "name_of",
    "config_dict",
    "result_key",
]


def _discover() -> dict[str, Method]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            method = getattr(importlib.import_module(f"{__name__}.{info.name}"), "METHOD", None)
            if isinstance(method, Method):
                found.append(method)
    # The reference first, storage steps last; otherwise by name.
    order = {"reference": 0, "structure": 1, "storage": 2}
    return {m.name: m for m in sorted(found, key=lambda m: (order[m.kind], m.name))}


REGISTRY: dict[str, Method] = _discover()
# The method every other is measured against (its kind is "reference": the checkpoint as it is).
REFERENCE: str = next(name for name, method in REGISTRY.items() if method.kind == "reference")


def get(name: str) -> Method:
    """The method called ``name``, or a :class:`ConfigError` listing them."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}") from None


def name_of(config_type: type) -> str:
    """The name of the method whose config type is ``config_type`` (each method has its own),
    so code composing steps names configs, never methods."""
    for name, method in REGISTRY.items():
        if method.config_type is config_type:
            return name
    raise ConfigError(f"no method takes a {config_type.__name__}")


@dataclasses.dataclass(frozen=True)
class Variant:
    """What to build: steps applied in order, then optional fine-tuning of the
    dense stack (frozen convolutions) before any storage step.

    Rules that keep a pipeline meaningful: the baseline stands alone; storage
    steps (int8) come last; nothing but storage follows SVD (its factors are
    what fine-tuning trains and what int8 stores).
    """

    steps: tuple[tuple[str, Any], ...]
    finetune: FinetuneConfig | None = None

    def __post_init__(self):
        if not self.steps:
            raise ConfigError("a variant needs at least one step")
        kinds = []
        for name, config in self.steps:
            method = get(name)
            if not isinstance(config, method.config_type):
                raise ConfigError(f"step {name!r} needs a {method.config_type.__name__}, got {type(config).__name__}")
            kinds.append(method.kind)
        names = [name for name, _ in self.steps]
        if "reference" in kinds and len(self.steps) > 1:
            raise ConfigError("the baseline cannot be combined with other steps")
        if any(k == "storage" for k in kinds) and kinds.index("storage") < len(kinds) - kinds.count("storage"):
            raise ConfigError("storage steps (int8) must come last in a pipeline")
        for i, name in enumerate(names):
            if get(name).last_structure and any(get(n).kind != "storage" for n in names[i + 1 :]):
                raise ConfigError(f"only storage steps (int8) may follow {get(name).label} in a pipeline")
        if self.finetune is not None and not self.finetune.steps:
            object.__setattr__(self, "finetune", None)

    @classmethod
    def of(cls, method: str, config=None, finetune: FinetuneConfig | None = None) -> "Variant":
        """A one-step variant (the method's default config if ``config`` is None)."""
        return cls(((method, config if config is not None else get(method).config_type()),), finetune)

    @classmethod
    def chain(cls, *configs, finetune: FinetuneConfig | None = None) -> "Variant":
        """The variant whose steps are ``configs`` in order, each step's method the one
        that takes that config (:func:`name_of`)."""
        return cls(tuple((name_of(type(config)), config) for config in configs), finetune)

    @property
    def trains(self) -> bool:
        """Whether building it trains (fine-tuning, retraining, gradual pruning)."""
        return self.finetune is not None or any(get(n).trains(c) for n, c in self.steps)

    @property
    def name(self) -> str:
        """``svd``, or ``svd+quantize`` for a pipeline."""
        return "+".join(name for name, _ in self.steps)

    def to_dict(self) -> dict:
        return {
            "steps": [{"method": n, "config": config_dict(c)} for n, c in self.steps],
            "finetune": config_dict(self.finetune) if self.finetune else None,
        }

    @classmethod
    def from_dict(cls, values: Mapping) -> "Variant":
        """The variant a result record describes (``steps``, or the older ``method``/``config``)."""
        steps = values.get("steps") or [{"method": values["method"], "config": values.get("config") or {}}]
        finetune = FinetuneConfig.from_dict(values["finetune"]) if values.get("finetune") else None
        return cls(tuple((s["method"], get(s["method"]).config_from_dict(s["config"])) for s in steps), finetune)

    def check(self, spec) -> None:
        """Each step's config against the network ``spec``; raises :class:`ConfigError`
        (cheap: run before reading any data)."""
        for name, config in self.steps:
            get(name).check(config, spec)

    def with_storage(self) -> "Variant":
        """This variant with the registry's storage step (int8) last, if it has none."""
        if any(get(n).kind == "storage" for n, _ in self.steps):
            return self
        storage = next(m for m in REGISTRY.values() if m.kind == "storage")
        steps = tuple(s for s in self.steps if get(s[0]).kind != "reference")
        return Variant(steps + ((storage.name, storage.config_type()),), self.finetune)

    def describe(self) -> str:
        text = " → ".join(get(n).describe(c) for n, c in self.steps)
        if self.finetune:
            text += f", fine-tuned {self.finetune.steps} steps"
            if self.finetune.distill:
                text += " (distilled)"
        return text


def build_variant(params, variant: Variant, context: BuildContext, finetune_dense) -> tuple[dict, dict]:
    """(params, facts) of ``variant`` built from ``params``: structure steps in order, then
    fine-tuning of the dense stack (``finetune_dense(dense, features, labels, config, masks=…,
    on_progress=…, teacher=…)``, over frozen convolutions, distilling the checkpoint if it says so) that keeps each step's structure — factors train
    as factors, and where a step keeps zeros (pruning) a mask keeps them zero — then each step's
    finalize (e.g. the reconstructed SVD form), then storage steps (int8) last."""
    structure = [(n, c) for n, c in variant.steps if get(n).kind != "storage"]
    storage = [(n, c) for n, c in variant.steps if get(n).kind == "storage"]
    facts: dict = {}
    for name, config in structure:
        params, step_facts = get(name).build(params, config, context)
        facts.update(step_facts)
    if variant.finetune:
        dense = {n: params[n] for n in model.dense_layer_names(params)}
        masks = None
        if any(get(name).keeps_zeros for name, _ in structure):
            masks = {n: np.asarray(layer["w"]) != 0 for n, layer in dense.items() if "w" in layer}
        trained = finetune_dense(
            dense,
            context.train_features(),
            context.train_labels,
            variant.finetune,
            masks=masks,
            on_progress=context.on_progress,
            teacher=context.teacher(variant.finetune.flip) if variant.finetune.needs_teacher else None,
        )
        params = {**params, **trained}
    for name, config in structure:
        params = get(name).finalize(params, config)
    for name, config in storage:
        params, step_facts = get(name).build(params, config, context)
        facts.update(step_facts)
    # Only float matrices can need float32 storage; int8 ones carry their own scales.
    facts["float32_layers"] = [n for n in facts.get("float32_layers", ()) if "w" in params.get(n, {})]
    return params, facts


def result_key(checkpoint_hash: str, variant: Variant) -> str:
    """The cache key of a variant's measured record: the checkpoint (and data)
    content, every step's canonical config and code version, and fine-tuning.
    Where latency was measured is not part of it: records carry that (see
    :func:`lowrank_core.measure.environment`)."""
    blob = json.dumps(
        {"checkpoint": checkpoint_hash, **variant.to_dict(), "versions": [get(n).version for n, _ in variant.steps]},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
