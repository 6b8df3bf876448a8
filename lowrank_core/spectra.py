"""Singular-value spectra of an engine's checkpoint, as the pages draw them: curves and stats."""

from __future__ import annotations

import os

from lowrank_core import checkpoint, compress, model
from lowrank_core.errors import ConfigError


def _view(s, shape=None) -> dict:
    out = {"curves": compress.spectrum_curves(s), "stats": compress.spectrum_stats(s)}
    return out if shape is None else {**out, "shape": tuple(shape)}


def trained_and_init(engine) -> dict[str, dict]:
    """Per dense layer: curves and summary stats, trained and at initialization."""
    init = engine.init_singular_values()
    out = {}
    for name, svd in engine.svds.items():
        out[name] = {
            "trained": compress.spectrum_curves(svd.s),
            "init": compress.spectrum_curves(init[name]),
            "stats": compress.spectrum_stats(svd.s),
            "init_stats": compress.spectrum_stats(init[name]),
            "shape": tuple(engine.params[name]["w"].shape),
        }
    return out


def as_data_sees_it(engine) -> dict[str, dict]:
    """Per dense layer: curves and stats of σ(LᵀW), the layer as the calibration images' inputs
    see it (:meth:`Intermediates.data_singular_values`)."""
    return {n: _view(s) for n, s in engine.intermediates.data_singular_values().items()}


def of_checkpoint(engine, directory: str | os.PathLike) -> dict[str, dict]:
    """Spectra of another checkpoint's dense layers (to overlay on the engine's), cached on disk
    by the content of its params file; a :class:`ConfigError` for another network's shapes."""
    params, _, digest = checkpoint.load_with_digest(directory)
    if model.spec_of(params) != engine.spec:
        raise ConfigError(
            f"{directory} has other layer shapes than the loaded checkpoint: pick one of the same network"
        )
    values = engine.intermediates.singular_values_of(params, digest)
    return {n: _view(s, params[n]["w"].shape) for n, s in values.items()}
