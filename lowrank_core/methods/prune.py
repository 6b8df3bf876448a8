"""Magnitude pruning: unstructured (zeros kept in the dense shapes) or
structured (hidden units dropped, matrices physically smaller), one-shot or
gradual (Zhu & Gupta's cubic schedule while the dense stack fine-tunes)."""

from __future__ import annotations

import argparse
import dataclasses

from lowrank_core import compress, model
from lowrank_core.errors import ConfigError
from lowrank_core.finetune import FinetuneConfig, gradual_prune_dense
from lowrank_core.methods.base import BuildContext, Method, Params, check_layer_names, parse_float

SCOPES = ("layer", "global")
SCHEDULES = ("one-shot", "gradual")
DEFAULT_GRADUAL_STEPS = 600


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """``scope`` "layer" (each kernel to the sparsity) or "global" (one magnitude
    threshold over all pruned kernels, convolutions included); ``structured``
    drops whole hidden units (scope does not apply). ``only`` prunes just those
    layers. Irrelevant fields are reset to their defaults (equal configs build
    equal variants)."""

    sparsity: float = 0.5
    scope: str = "layer"
    structured: bool = False
    # "gradual": the dense kernels reach the sparsity on Zhu & Gupta's cubic
    # schedule while the dense stack fine-tunes for ``gradual_steps`` (frozen
    # convolutions get their final mask at once).
    schedule: str = "one-shot"
    gradual_steps: int = DEFAULT_GRADUAL_STEPS
    only: tuple[str, ...] = ()

    def __post_init__(self):
        if not (isinstance(self.sparsity, (int, float)) and 0 <= self.sparsity < 1):
            raise ConfigError(f"sparsity must lie in [0, 1), got {self.sparsity}")
        if self.scope not in SCOPES:
            raise ConfigError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be 'one-shot' or 'gradual', got {self.schedule!r}")
        if self.schedule == "gradual" and self.structured:
            raise ConfigError("gradual pruning is unstructured; choose one-shot for structured pruning")
        if not (
            isinstance(self.gradual_steps, int) and not isinstance(self.gradual_steps, bool) and self.gradual_steps >= 1
        ):
            raise ConfigError(f"gradual_steps must be a positive integer, got {self.gradual_steps}")
        if self.structured:
            object.__setattr__(self, "scope", "layer")
        if self.schedule == "one-shot":
            object.__setattr__(self, "gradual_steps", DEFAULT_GRADUAL_STEPS)

    def layers_of(self, params) -> tuple[str, ...]:
        """The kernels of ``params`` this config prunes."""
        names = compress.prunable_layers(params)
        return tuple(n for n in names if n in self.only) if self.only else names


def build(params: Params, config: PruneConfig, context: BuildContext) -> tuple[Params, dict]:
    check_layer_names(config.only, compress.prunable_layers(params), "prunable layer")
    if config.structured:
        out = compress.prune_structured(params, config.layers_of(params), config.sparsity)
    elif config.schedule == "one-shot":
        out = compress.prune_unstructured(params, config.layers_of(params), config.sparsity, config.scope)
    else:
        chosen = config.layers_of(params)
        dense = {n: params[n] for n in model.dense_layer_names(params) if n in chosen}
        frozen = {n: params[n] for n in model.conv_layer_names(params) if n in chosen}
        out = compress.copy_params(params)
        if dense:
            trained, masks = gradual_prune_dense(
                {n: params[n] for n in model.dense_layer_names(params)},
                context.train_features(),
                context.train_labels,
                FinetuneConfig.labels_only(config.gradual_steps, seed=context.seed),
                chosen,
                config.sparsity,
                config.scope,
                frozen=frozen,
                on_progress=context.on_progress,
            )
            out.update(trained)
            for name in frozen:
                out[name] = dict(out[name], w=out[name]["w"] * masks[name])
        else:
            out = compress.prune_unstructured(params, chosen, config.sparsity, config.scope)
    return out, {"sparsity": compress.sparsity_of(out)}


def check(config: PruneConfig, spec) -> None:
    check_layer_names(config.only, spec.conv_layers + spec.dense_layers, "prunable layer")


def describe(config: PruneConfig) -> str:
    kind = "structured" if config.structured else f"{config.scope}-wise"
    text = f"prune {config.sparsity:.0%} {kind} {config.schedule}"
    if config.schedule == "gradual":
        text += f" ({config.gradual_steps} steps)"
    return text + (" on " + "+".join(config.only) if config.only else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prune")
    group.add_argument("--sparsity", default="0.5", help="prune: fraction of kernel weights (or units) removed")
    group.add_argument("--scope", default="layer", choices=SCOPES)
    group.add_argument("--structured", action="store_true", help="prune: drop whole hidden units")
    group.add_argument(
        "--schedule",
        default="one-shot",
        choices=SCHEDULES,
        help="prune: gradual = Zhu & Gupta cubic schedule while fine-tuning the dense stack",
    )
    group.add_argument(
        "--gradual-steps",
        type=int,
        default=DEFAULT_GRADUAL_STEPS,
        help="prune: fine-tuning steps of the gradual schedule",
    )


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    return PruneConfig(
        sparsity=parse_float(args.sparsity, "sparsity"),
        scope=args.scope,
        structured=args.structured,
        schedule=args.schedule,
        gradual_steps=args.gradual_steps,
    )


METHOD = Method(
    name="prune",
    label="Pruning",
    colour="#ff7f0e",
    version=4,
    config_type=PruneConfig,
    build=build,
    check=check,
    describe=describe,
    trains=lambda config: config.schedule == "gradual",
    keeps_zeros=True,
    sweep=("sparsity", "0.1:0.9:0.1"),
    add_arguments=add_arguments,
    config_from_args=config_from_args,
)
