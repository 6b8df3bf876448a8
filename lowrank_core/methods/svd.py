"""Truncated SVD of the dense layers: ``W ≈ U_k S_k V_kᵀ``.

``factorized`` stores the pair (``u`` = U_k, m×k; ``v`` = S_k V_kᵀ, k×n), so
``x → (x u) v + b`` runs two thinner matrices; ``reconstructed`` stores their
product in W's shape (same size and speed, rank k). Fine-tuning trains the
factors in both forms (the reconstructed product is formed afterwards), so a
fine-tuned layer keeps rank ≤ k.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Iterable

import numpy as np
import scipy.linalg

from lowrank_core import compress, refit
from lowrank_core.errors import ConfigError
from lowrank_core.methods.base import (
    BuildContext,
    Method,
    Params,
    check_layer_names,
    dense_names,
    is_dense_name,
    parse_float,
)

FORMS = ("reconstructed", "factorized")
# "weights": truncate W (Eckart–Young in ‖W − W_k‖). "activations": truncate LᵀW, where
# L Lᵀ = XᵀX over the layer's inputs on calibration images, and map back with L⁻ᵀ: the
# rank-k W_k closest in what the layer outputs on data, ‖X(W − W_k)‖ (SVD-LLM's whitening).
# "calibrated": ranks chosen as for "activations", then every compressed layer refit in order,
# in closed form, to the original layer's outputs from the inputs the already compressed layers
# give (:mod:`lowrank_core.refit`): later layers correct the earlier ones' error. After structured
# pruning, both data bases calibrate each kernel on the inputs it kept (L of that block of XᵀX).
BASES = ("weights", "activations", "calibrated")
# The basis whose one-layer-at-a-time table predicts each basis: one layer refit alone, from its
# own original inputs, is the activation-whitened truncation (with its bias refit).
SENSITIVITY_BASIS = {"weights": "weights", "activations": "activations", "calibrated": "activations"}


@dataclasses.dataclass(frozen=True)
class SvdConfig:
    """How to choose each dense layer's rank and which form to build.

    Exactly one rule applies per layer, first match wins: ``layer_ranks``
    (explicit ranks), ``layer_fractions`` (per-layer fractions), ``param_budget``
    (ranks that keep the most spectral energy within that share of the
    compressed layers' dense parameter count, counted in factorized form),
    ``energy`` (smallest k keeping that share of Σσ²), else ``rank_fraction``
    (k = max(1, ⌊f·min(m, n)⌋), the seed's semantics). The output layer is
    compressed if ``include_output`` or if it has its own rank or fraction. ``only`` restricts the
    compression to the named layers (the others keep their weights). Fields a
    chosen rule makes irrelevant are reset to their defaults, so two configs
    are equal exactly when they build the same variant. Ranks are checked
    against the network when the variant is built.
    """

    rank_fraction: float = 1.0
    form: str = "reconstructed"
    energy: float | None = None
    layer_ranks: tuple[tuple[str, int], ...] = ()
    include_output: bool = True  # the 1000×10 output layer, as in the seed
    layer_fractions: tuple[tuple[str, float], ...] = ()
    param_budget: float | None = None
    only: tuple[str, ...] = ()
    basis: str = "weights"

    def __post_init__(self):
        if not (isinstance(self.rank_fraction, (int, float)) and 0 < self.rank_fraction <= 1):
            raise ConfigError(f"rank fraction must lie in (0, 1], got {self.rank_fraction}")
        if self.form not in FORMS:
            raise ConfigError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.basis not in BASES:
            raise ConfigError(f"basis must be one of {BASES}, got {self.basis!r}")
        if self.energy is not None and not (isinstance(self.energy, (int, float)) and 0 < self.energy <= 1):
            raise ConfigError(f"energy must lie in (0, 1], got {self.energy}")
        for name, rank in self.layer_ranks:
            if not is_dense_name(name):
                raise ConfigError(f"unknown layer {name!r}; dense layers are named linear, linear_1, …")
            if not (isinstance(rank, (int, np.integer)) and not isinstance(rank, bool) and rank >= 1):
                raise ConfigError(f"rank of {name} must be a positive integer, got {rank}")
        for name, fraction in self.layer_fractions:
            if not is_dense_name(name):
                raise ConfigError(f"unknown layer {name!r}; dense layers are named linear, linear_1, …")
            if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
                raise ConfigError(f"rank fraction of {name} must lie in (0, 1], got {fraction}")
        if self.param_budget is not None and not (
            isinstance(self.param_budget, (int, float)) and 0 < self.param_budget <= 1
        ):
            raise ConfigError(f"parameter budget must lie in (0, 1], got {self.param_budget}")
        for name in self.only:
            if not is_dense_name(name):
                raise ConfigError(f"unknown layer {name!r}; dense layers are named linear, linear_1, …")
        for names, what in ((self.layer_ranks, "layer_ranks"), (self.layer_fractions, "layer_fractions")):
            if len({n for n, _ in names}) != len(names):
                raise ConfigError(f"{what} names a layer twice")
        # Canonical form: a rule that wins makes the ones after it irrelevant.
        if self.param_budget is not None:
            object.__setattr__(self, "energy", None)
        if self.param_budget is not None or self.energy is not None:
            object.__setattr__(self, "rank_fraction", 1.0)
        object.__setattr__(self, "layer_ranks", tuple((n, int(k)) for n, k in self.layer_ranks))
        object.__setattr__(self, "layer_fractions", tuple((n, float(f)) for n, f in self.layer_fractions))

    @property
    def table_basis(self) -> str:
        """The basis of the one-layer-at-a-time sensitivity table that predicts this one."""
        return SENSITIVITY_BASIS[self.basis]

    def layers_of(self, params) -> tuple[str, ...]:
        """The dense layers of ``params`` this config compresses."""
        names = dense_names(params)
        named = {n for n, _ in self.layer_ranks} | {n for n, _ in self.layer_fractions}
        # The output layer is in when included, or when given its own rank or fraction.
        layers = tuple(n for n in names if self.include_output or n != names[-1] or n in named)
        return tuple(n for n in layers if n in self.only) if self.only else layers


def choose_ranks(config: SvdConfig, svds, layers: tuple[str, ...] | None = None, shapes=None) -> dict[str, int]:
    """The rank the config gives each layer it compresses: ``layers`` (default: the
    config's layers of a network whose dense layers are the keys of ``svds``). With
    ``shapes`` (each layer's (m, n)), ``svds`` is read only for rules that need a spectrum."""
    layers = config.layers_of(svds) if layers is None else layers
    explicit, fractions = dict(config.layer_ranks), dict(config.layer_fractions)
    budget = compress.ranks_for_budget(svds, layers, config.param_budget) if config.param_budget else {}
    ranks = {}
    for name in layers:
        m, n = shapes[name] if shapes else (svds[name].u.shape[0], svds[name].vt.shape[1])
        if name in explicit:
            if explicit[name] > min(m, n):
                raise ConfigError(f"rank of {name} must be an integer in 1..{min(m, n)}, got {explicit[name]}")
            ranks[name] = explicit[name]
        elif name in fractions:
            ranks[name] = compress.rank_for_fraction(fractions[name], m, n)
        elif name in budget:
            ranks[name] = budget[name]
        elif config.energy is not None:
            ranks[name] = compress.rank_for_energy(svds[name].s, config.energy)
        else:
            ranks[name] = compress.rank_for_fraction(config.rank_fraction, m, n)
    return ranks


def _check_names(config: SvdConfig, params) -> None:
    names = dense_names(params)
    check_layer_names(
        [n for n, _ in config.layer_ranks] + [n for n, _ in config.layer_fractions] + list(config.only),
        names,
        "dense layer",
    )
    for name in config.layers_of(params):
        if "w" not in params[name]:
            raise ConfigError(f"{name} is already factorized or quantized; put SVD before int8 storage")


def check(config: SvdConfig, spec) -> None:
    """Layer names and explicit ranks against the network ``spec`` (a :class:`model.NetworkSpec`)."""
    shapes = spec.shapes()
    names = spec.dense_layers
    check_layer_names(
        [n for n, _ in config.layer_ranks] + [n for n, _ in config.layer_fractions] + list(config.only),
        names,
        "dense layer",
    )
    for name, rank in config.layer_ranks:
        limit = min(shapes[name]["w"])
        if rank > limit:
            raise ConfigError(f"rank of {name} must be an integer in 1..{limit}, got {rank}")


def build(params: Params, config: SvdConfig, context: BuildContext) -> tuple[Params, dict]:
    """Each chosen layer as its rank-k factors ``u``, ``v`` (see :func:`finalize` for the form)."""
    _check_names(config, params)
    layers = config.layers_of(params)
    rows = _kept_rows(config, params, context)
    factors = _Lazy(lambda name: _input_factor(config, params, name, context, rows))
    svds = _Lazy(lambda name: _svd(params[name]["w"], factors[name], name, context, rows.get(name)))
    shapes = {name: params[name]["w"].shape for name in layers}
    ranks = choose_ranks(config, svds, layers, shapes)  # explicit ranks and fractions need no SVD
    if config.basis == "calibrated":
        out = refit.sequential_refit(params, ranks, context.calibration_path(), context.kept_units(params))
        return out, _facts(config, params, ranks)
    out = compress.copy_params(params)
    for name, k in ranks.items():
        u_k, sv_k = compress.rank_approximated_weight(svds[name], k)
        u_k, sv_k = np.array(u_k), np.array(sv_k)
        w = np.asarray(params[name]["w"])
        if factors[name] is not None:
            u_k = scipy.linalg.solve_triangular(factors[name].T, u_k, lower=False).astype(np.float32)  # L⁻ᵀ U_k
        else:
            u_k[(w == 0).all(axis=1)] = 0
        # A zero row or column of W is zero in every truncation too; the SVD leaves
        # ~1e-17 there. Exact zeros keep dead units visible (and droppable) downstream.
        sv_k[:, (w == 0).all(axis=0)] = 0
        out[name] = {"u": u_k, "v": sv_k, "b": params[name]["b"]}
    return out, _facts(config, params, ranks)


def _facts(config: SvdConfig, params: Params, ranks: dict[str, int]) -> dict:
    facts = {"ranks": ranks, "break_even_ranks": {n: compress.break_even_rank(*params[n]["w"].shape) for n in ranks}}
    if config.form == "reconstructed":
        # Rounding W_k to float16 would make it full-rank again: it is stored as float32.
        facts["float32_layers"] = list(ranks)
    return facts


class _Lazy(dict):
    """Each layer's value (its input factor, its SVD), computed the first time it is asked for."""

    def __init__(self, compute):
        super().__init__()
        self._compute = compute

    def __missing__(self, name):
        self[name] = value = self._compute(name)
        return value


def _svd(w, factor: np.ndarray | None, name: str, context: BuildContext, rows=None) -> compress.LayerSvd:
    """The SVD the basis truncates: of W, or of LᵀW (through the context's cache when it has one)."""
    if factor is None:
        return context.svd(w)
    if context.whitened_svd is not None:
        return context.whitened_svd(name, w, rows)
    return context.svd(factor.T @ w)


def _kept_rows(config: SvdConfig, params: Params, context: BuildContext) -> dict[str, np.ndarray | None]:
    """For the data bases: which of the checkpoint's inputs each dense layer reads, so a kernel
    pruned before SVD is calibrated on the inputs it kept."""
    if config.basis == "weights":
        return {}
    if context.input_factor is None or context.kept_units is None or context.calibration_path is None:
        raise ConfigError(f"the {config.basis} basis needs calibration data (build through the engine)")
    return {n: rows for n, (rows, _) in context.kept_units(params).items()}


def _input_factor(config: SvdConfig, params: Params, name: str, context: BuildContext, rows) -> np.ndarray | None:
    """L for the activation basis on the inputs the layer kept (None for the weight basis)."""
    if config.basis == "weights":
        return None
    return context.input_factor(name, rows[name])


def finalize(params: Params, config: SvdConfig) -> Params:
    """After any fine-tuning: the reconstructed form multiplies each factor pair out."""
    if config.form == "factorized":
        return params
    out = compress.copy_params(params)
    for name in config.layers_of(params):
        layer = params[name]
        if "u" in layer:
            out[name] = {"w": np.asarray(layer["u"]) @ np.asarray(layer["v"]), "b": layer["b"]}
    return out


def svd_compress(params: Params, config: SvdConfig, svds=None) -> Params:
    """The variant ``config`` makes of ``params`` in its form, without fine-tuning
    (``svds``: precomputed :class:`compress.LayerSvd` by layer name, optional)."""
    by_id = {id(params[n]["w"]): svd for n, svd in (svds or {}).items() if n in params and "w" in params[n]}
    context = BuildContext(
        svd=lambda w: by_id.get(id(w)) or compress.layer_svd(w),
        train_features=lambda: None,
        train_labels=np.zeros(0, np.int32),
    )
    out, _ = build(params, config, context)
    return finalize(out, config)


def describe(config: SvdConfig) -> str:
    if config.layer_ranks:
        rule = "ranks " + ", ".join(f"{n}={k}" for n, k in config.layer_ranks)
    elif config.param_budget:
        rule = f"budget {config.param_budget:.0%} of params"
    elif config.energy:
        rule = f"energy {config.energy:.0%}"
    else:
        rule = f"f={config.rank_fraction:g}"
    if config.layer_fractions:
        rule += " (" + ", ".join(f"{n} f={f:g}" for n, f in config.layer_fractions) + ")"
    if config.only:
        rule += " on " + "+".join(config.only)
    basis = {"weights": "", "activations": ", activation basis", "calibrated": ", calibrated refit"}[config.basis]
    return f"SVD {config.form} {rule}" + ("" if config.include_output else ", output kept") + basis


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("svd")
    group.add_argument("--rank-fraction", default="1.0", help="svd: k = max(1, floor(f·min(m, n)))")
    group.add_argument("--form", default="reconstructed", choices=FORMS)
    group.add_argument("--energy", help="svd: keep this share of Σσ² per layer instead of a fraction")
    group.add_argument("--layer-ranks", help="svd: per-layer ranks, e.g. linear=300,linear_1=200")
    group.add_argument("--exclude-output", action="store_true", help="svd: leave the output layer as it is")
    group.add_argument("--layer-fractions", help="svd: per-layer fractions, e.g. linear=0.1,linear_4=1")
    group.add_argument("--param-budget", help="svd: ranks keeping most energy within this share of dense weights")
    group.add_argument(
        "--basis",
        default="weights",
        choices=BASES,
        help="svd: truncate W; or LᵀW whitened by the layer's inputs on 5,000 training images; or that, "
        "then each layer refit in closed form to the original outputs from the compressed layers' inputs",
    )


def _pairs(text: str | None, option: str, value_of) -> tuple:
    pairs = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{option} wants name=value pairs, got {item!r}")
        pairs.append((name.strip(), value_of(value.strip(), item)))
    return tuple(pairs)


def _rank(text: str, item: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"--layer-ranks wants name=rank pairs, got {item!r}")
    return int(text)


def config_from_args(args: argparse.Namespace) -> SvdConfig:
    return SvdConfig(
        rank_fraction=parse_float(args.rank_fraction, "rank fraction"),
        form=args.form,
        energy=None if args.energy is None else parse_float(args.energy, "energy"),
        layer_ranks=_pairs(args.layer_ranks, "--layer-ranks", _rank),
        include_output=not args.exclude_output,
        layer_fractions=_pairs(
            args.layer_fractions, "--layer-fractions", lambda v, item: parse_float(v, f"rank fraction in {item!r}")
        ),
        param_budget=None if args.param_budget is None else parse_float(args.param_budget, "parameter budget"),
        basis=args.basis,
    )


def global_fraction_points(results: Iterable[dict]) -> dict[tuple[str, bool], list[dict]]:
    """Measured plain SVD results on a global rank fraction (no other rule, no
    fine-tuning, one step), grouped by (form, output layer included), each
    group sorted by fraction: the only points that are comparable on one curve."""
    groups: dict[tuple[str, bool], dict[float, dict]] = {}
    for r in results:
        c = r.get("config") or {}
        if (
            r["method"] != "svd"
            or r.get("finetune")
            or c.get("energy")
            or c.get("layer_ranks")
            or c.get("layer_fractions")
            or c.get("param_budget")
            or c.get("only")
        ):
            continue
        groups.setdefault((c["form"], bool(c["include_output"])), {})[c["rank_fraction"]] = r
    return {key: [points[f] for f in sorted(points)] for key, points in groups.items()}


def headlines(results: Iterable[dict], baseline: dict) -> list[str]:
    """Does truncation save time? Answered per comparable group of measured
    points (same form, output layer in or out), naming the points it used and
    never claiming anything between or beyond them."""
    if "latency_ms" not in baseline:
        return []
    base_ms, batch = baseline["latency_ms"], baseline["batch_size"]
    lines = []
    for (form, with_output), points in sorted(global_fraction_points(results).items()):
        timed = [r for r in points if "latency_ms" in r and r.get("batch_size") == batch]
        if len(timed) < 2:
            continue
        fractions = ", ".join(f"{r['config']['rank_fraction']:g}" for r in timed)
        which = (
            f"{form}, output layer {'truncated too' if with_output else 'kept'}; "
            f"{len(timed)} measured fractions {fractions}"
        )
        faster = [r for r in timed if r["latency_ms"] < 0.95 * base_ms]
        if not faster:
            lines.append(
                f"**{which}**: none runs ≥ 5 % faster than the baseline ({base_ms:.0f} ms per batch of {batch:,})."
            )
            continue
        best = max(faster, key=lambda r: r["config"]["rank_fraction"])
        lines.append(
            f"**{which}**: {len(faster)} of them run ≥ 5 % faster than the baseline; the largest is "
            f"f = {best['config']['rank_fraction']:g} ({best['latency_ms']:.0f} ms vs {base_ms:.0f} ms per "
            f"batch of {batch:,}, accuracy {best['accuracy']:.2%} vs {baseline['accuracy']:.2%} on "
            f"{best['n_test']:,} test images)."
        )
    return lines


METHOD = Method(
    name="svd",
    label="Low-rank (SVD)",
    colour="#1f77b4",
    # 10: the calibrated refit's first layer from a full eigendecomposition (last bits differ);
    # 9: factors from the Gram route; factorized dead units dropped when run
    version=10,
    config_type=SvdConfig,
    build=build,
    finalize=finalize,
    check=check,
    describe=describe,
    last_structure=True,
    sweep=("rank_fraction", "0.05:1.0:0.05"),
    headlines=headlines,
    add_arguments=add_arguments,
    config_from_args=config_from_args,
)
