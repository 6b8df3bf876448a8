"""Removal of hidden dense layers; the rewired dense head is retrained over the
frozen convolutions (the second seed's option A)."""

from __future__ import annotations

import argparse
import dataclasses

from lowrank_core import compress, model
from lowrank_core.errors import ConfigError
from lowrank_core.finetune import FinetuneConfig, finetune_dense
from lowrank_core.methods.base import BuildContext, Method, Params, is_dense_name


@dataclasses.dataclass(frozen=True)
class RemoveConfig:
    layers: tuple[str, ...] = ("linear_1",)
    retrain_steps: int = 300

    def __post_init__(self):
        if not self.layers:
            raise ConfigError("name at least one hidden layer to remove")
        for name in self.layers:
            if not is_dense_name(name):
                raise ConfigError(f"cannot remove {name!r}; only hidden dense layers (linear, linear_1, …) can go")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError("each layer may be removed once")
        if not (
            isinstance(self.retrain_steps, int) and not isinstance(self.retrain_steps, bool) and self.retrain_steps >= 0
        ):
            raise ConfigError(f"retrain_steps must be an integer ≥ 0, got {self.retrain_steps}")


def build(params: Params, config: RemoveConfig, context: BuildContext) -> tuple[Params, dict]:
    out, changed = compress.remove_layers(params, config.layers, key_seed=context.seed)
    # Every layer after a cut sees new inputs, so the whole dense head is retrained.
    if config.retrain_steps:
        dense = {n: out[n] for n in model.dense_layer_names(out)}
        out.update(
            finetune_dense(
                dense,
                context.train_features(),
                context.train_labels,
                FinetuneConfig.labels_only(config.retrain_steps, seed=context.seed),
                on_progress=context.on_progress,
            )
        )
    return out, {"reinitialized_layers": list(changed)}


def check(config: RemoveConfig, spec) -> None:
    for name in config.layers:
        if name not in spec.hidden_layers:
            raise ConfigError(f"cannot remove {name!r}; removable layers are {', '.join(spec.hidden_layers)}")


def describe(config: RemoveConfig) -> str:
    return f"remove {'+'.join(config.layers)}, retrain {config.retrain_steps} steps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("remove")
    group.add_argument("--remove", help="remove: hidden layers to drop, e.g. linear_1,linear_2")
    group.add_argument("--retrain-steps", type=int, default=300, help="remove: head retraining steps")


def config_from_args(args: argparse.Namespace) -> RemoveConfig:
    return RemoveConfig(
        layers=tuple(n.strip() for n in (args.remove or "").split(",") if n.strip()), retrain_steps=args.retrain_steps
    )


METHOD = Method(
    name="remove",
    label="Layer removal",
    colour="#2ca02c",
    version=4,
    config_type=RemoveConfig,
    build=build,
    check=check,
    describe=describe,
    trains=lambda config: config.retrain_steps > 0,
    add_arguments=add_arguments,
    config_from_args=config_from_args,
)
