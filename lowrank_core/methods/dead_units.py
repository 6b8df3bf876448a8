"""Lossless removal of dead hidden units (see :func:`compress.drop_dead_units`)."""

from __future__ import annotations

import dataclasses

from lowrank_core import compress, model
from lowrank_core.methods.base import BuildContext, Method, Params


@dataclasses.dataclass(frozen=True)
class DeadUnitsConfig:
    """No settings: every provably dead unit goes."""


def build(params: Params, config: DeadUnitsConfig, context: BuildContext) -> tuple[Params, dict]:
    out = compress.drop_dead_units(params)
    names = model.dense_layer_names(out)
    return out, {"widths": {n: int(out[n]["w"].shape[1]) for n in names if "w" in out[n]}}


METHOD = Method(
    name="dead_units",
    label="Dead-unit removal (lossless)",
    colour="#8c564b",
    version=3,
    config_type=DeadUnitsConfig,
    build=build,
    describe=lambda config: "dead units dropped",
)
