"""The checkpoint as it is: the reference every variant is compared with."""

from __future__ import annotations

import dataclasses

from lowrank_core import compress
from lowrank_core.methods.base import BuildContext, Method, Params


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """No settings."""


def build(params: Params, config: BaselineConfig, context: BuildContext) -> tuple[Params, dict]:
    return compress.copy_params(params), {}


METHOD = Method(
    name="baseline",
    label="Baseline",
    colour="#222222",
    version=4,
    config_type=BaselineConfig,
    build=build,
    describe=lambda config: "Baseline",
    kind="reference",
)
