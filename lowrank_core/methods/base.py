"""What every compression method provides, and what a build may use.

A method is one module in this package exposing ``METHOD``, a :class:`Method`:
its frozen config dataclass (validated on construction), a pure
``build(params, config, context) -> (params, facts)``, its code version (bump
it when the method computes something else, so cached results are not
trusted), a label and a colour for the app, how to describe one config in a
few words, and its command-line options. The engine, the CLI, the report and
the pages only iterate :data:`lowrank_core.methods.REGISTRY`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Callable, Mapping

import numpy as np

from lowrank_core import compress, model, refit
from lowrank_core.errors import ConfigError

Params = dict[str, dict[str, np.ndarray]]
ProgressFn = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a build may ask of the engine: everything lazy, cached by content."""

    svd: Callable[[np.ndarray], compress.LayerSvd]  # thin SVD of a matrix (cached by its bytes)
    train_features: Callable[[], np.ndarray]  # the convolutions' output on the training images
    train_labels: np.ndarray
    on_progress: ProgressFn | None = None
    seed: int = 0
    # L with L Lᵀ = XᵀX over a dense layer's inputs on calibration images (training images only);
    # given the inputs (rows) a pruned kernel kept, L of that block of XᵀX.
    input_factor: Callable[..., np.ndarray] | None = None
    # The SVD of LᵀW for a layer's name, kernel and kept rows (cached, LᵀW formed once per kernel).
    whitened_svd: Callable[..., compress.LayerSvd] | None = None
    # The checkpoint's dense stack on those calibration images, for the calibrated refit.
    calibration_path: Callable[[], refit.CalibrationPath] | None = None
    # Which of the checkpoint's inputs and units each dense layer of a pruned network kept
    # (:func:`lowrank_core.compress.kept_units`).
    kept_units: Callable[[Params], dict[str, tuple[np.ndarray, np.ndarray]]] | None = None
    # The checkpoint's logits on the training features (and, given True, on the mirrored images
    # with their features): fine-tuning's distillation targets (:class:`finetune.Teacher`).
    teacher: Callable[[bool], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    label: str
    colour: str
    version: int
    config_type: type
    build: Callable[[Params, Any, BuildContext], tuple[Params, dict]]
    describe: Callable[[Any], str]
    # "reference" (the baseline); "structure": changes what the network computes (ranks, units,
    # layers); "storage": changes how it is stored (int8), last in a pipeline, after any fine-tuning.
    kind: str = "structure"
    # Whether its zeros are structure fine-tuning must keep (pruning: masks hold them at zero).
    keeps_zeros: bool = False
    # After fine-tuning (or at once without it): e.g. multiply SVD factors out for the reconstructed form.
    finalize: Callable[[Params, Any], Params] = lambda params, config: params
    # Cheap checks of a config against the network (names, ranks), before any data is read.
    check: Callable[[Any, Any], None] = lambda config, spec: None
    # Whether building with this config trains (minutes: the engine runs it as background work).
    trains: Callable[[Any], bool] = lambda config: False
    # Only storage steps may follow it in a pipeline (SVD: its factors are what fine-tuning trains and int8 stores).
    last_structure: bool = False
    # (the config field a sweep varies, its default grid "start:stop:step" or "a,b,c"); None: not swept.
    sweep: tuple[str, str] | None = None
    # Sentences answering what its measured results show (e.g. does truncation save time), for the Overview.
    headlines: Callable[[list, dict], list[str]] = lambda results, baseline: []
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    config_from_args: Callable[[argparse.Namespace], Any] | None = None

    def config_from(self, args: argparse.Namespace):
        """This method's config from parsed command-line options."""
        return self.config_from_args(args) if self.config_from_args else self.config_type()

    def config_from_dict(self, values: Mapping):
        """The frozen config from its JSON form (lists back to tuples)."""

        def as_tuple(v):
            return tuple(as_tuple(x) for x in v) if isinstance(v, list) else v

        return self.config_type(**{k: as_tuple(v) for k, v in values.items()})


def config_dict(config) -> dict:
    """A config as plain JSON values."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def parse_float(text: str, what: str) -> float:
    """A float from a command-line value, or a one-line error naming the option."""
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {text!r}") from None


def check_layer_names(names, allowed: tuple[str, ...], what: str = "layer") -> None:
    """A :class:`ConfigError` for the first name not in ``allowed``."""
    for name in names:
        if name not in allowed:
            raise ConfigError(f"unknown {what} {name!r}; the network's are {', '.join(allowed)}")


def is_dense_name(name: str) -> bool:
    return name == "linear" or (name.startswith("linear_") and name[7:].isdigit())


def dense_names(params: Mapping) -> tuple[str, ...]:
    return tuple(model.dense_layer_names(params))
