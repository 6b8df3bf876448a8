"""int8 storage of the dense matrices: symmetric, per output column.

Each matrix (``w``, or the SVD factors ``u`` and ``v``) is stored as int8
``<key>_q`` with float32 ``<key>_scale`` and runs dequantized. A storage step:
in a pipeline it comes last, after any fine-tuning, so the weights measured
are exactly on the int8 grid that is stored.
"""

from __future__ import annotations

import dataclasses

from lowrank_core import compress
from lowrank_core.methods.base import BuildContext, Method, Params


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """No settings: int8, symmetric, one scale per output column."""


def build(params: Params, config: QuantizeConfig, context: BuildContext) -> tuple[Params, dict]:
    out = compress.quantize_dense(params)
    return out, {"int8_layers": [n for n, layer in out.items() if any(k.endswith("_q") for k in layer)]}


METHOD = Method(
    name="quantize",
    label="Int8 storage",
    colour="#9467bd",
    version=5,
    config_type=QuantizeConfig,
    build=build,
    describe=lambda config: "int8",
    kind="storage",
)
