"""The compression advisor: per-layer SVD ranks in every basis, then pipelines
(structured pruning before the SVD) and int8 storage on top, every reported
candidate measured on the full test set.

1. For each basis, each dense layer truncated alone is measured at a few rank
   fractions (:data:`ANCHOR_FRACTIONS`); the drops at the other ranks are
   interpolated along the output error that basis's truncation is predicted
   to make in closed form (:meth:`Intermediates.output_energies`), never past
   the largest error measured.
2. Assuming drops add up across layers (the Low-rank page shows how well they
   do), a Pareto merge over layers gives, for any total predicted drop, the
   per-layer ranks with the fewest parameters (a layer may also stay dense) —
   the selection Qualcomm AIMET's greedy compression-ratio search approximates,
   here solved exactly over the grid.
3. The predicted budget is then searched by bisection against *measured*
   drops: each candidate is built and measured like any variant (cached, on
   the Pareto chart, in Compare & export); the answer is the best measured one
   that meets the target. Predictions only choose what to measure; they are
   never reported as results.
4. With pruning: structured pruning (the lossless dead-unit removal, or the
   weakest 30…80 % of hidden units), then each basis's best ranks in that basis
   on the smaller matrices (the data bases calibrate the units each kernel
   kept), the sparsity bisected (more pruning only drops more); the best
   pipeline's basis is then searched again with its pruning in front. With
   int8: int8 on top of the answer, measured.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from lowrank_core import compress, methods, model, runtimes, sensitivity
from lowrank_core.errors import ConfigError
from lowrank_core.finetune import FinetuneConfig
from lowrank_core.methods import svd as svd_method
from lowrank_core.methods.dead_units import DeadUnitsConfig
from lowrank_core.methods.prune import PruneConfig
from lowrank_core.methods.quantize import QuantizeConfig
from lowrank_core.methods.svd import SvdConfig

MINIMIZE = ("params", "bytes", "latency")
# The methods the advisor composes (SVD required; pruning in front, int8 on top), by their configs.
SVD, PRUNE, INT8 = (methods.name_of(t) for t in (SvdConfig, PruneConfig, QuantizeConfig))
SEARCHABLE = (SVD, PRUNE, INT8)
# Structured pruning before SVD: drop the weakest hidden units (dead ones first: zero norm), then
# truncate what is left at the chosen ranks. 0 stands for the lossless dead-unit removal.
PIPELINE_SPARSITIES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8)


@dataclasses.dataclass(frozen=True)
class AdvisorConfig:
    """``max_drop`` in accuracy points below the baseline (1.0 = one point);
    ``budget`` (for :func:`most_accurate`) a share of the baseline's cost."""

    max_drop: float = 1.0
    minimize: str = "params"
    methods: tuple[str, ...] = SEARCHABLE
    finetune_steps: int = 0
    max_measurements: int = 8
    fractions: tuple[float, ...] = sensitivity.DEFAULT_FRACTIONS
    basis: str = "all"  # one of lowrank_core.methods.svd.BASES, or "all": every basis searched
    runtime: str = runtimes.PRODUCT  # whose measured latency ``minimize="latency"`` minimizes

    def __post_init__(self):
        if not (isinstance(self.max_drop, (int, float)) and 0 <= self.max_drop <= 100):
            raise ConfigError(f"max drop must be between 0 and 100 accuracy points, got {self.max_drop}")
        if self.minimize not in MINIMIZE:
            raise ConfigError(f"minimize must be one of {', '.join(MINIMIZE)}, got {self.minimize!r}")
        unknown = [m for m in self.methods if m not in SEARCHABLE]
        if unknown or SVD not in self.methods:
            raise ConfigError(
                f"the advisor searches {SVD} (required), {PRUNE} and {INT8}; got {', '.join(self.methods)}"
            )
        if not (isinstance(self.finetune_steps, int) and 0 <= self.finetune_steps <= 5000):
            raise ConfigError(f"fine-tuning steps must be an integer in 0..5000, got {self.finetune_steps}")
        if not (isinstance(self.max_measurements, int) and 1 <= self.max_measurements <= 50):
            raise ConfigError("max_measurements must be an integer in 1..50")
        if self.basis != "all":
            SvdConfig(basis=self.basis)  # validates it
        runtimes.get(self.runtime)

    @property
    def bases(self) -> tuple[str, ...]:
        """The SVD bases searched, the weight basis first."""
        return svd_method.BASES if self.basis == "all" else (self.basis,)

    @property
    def with_latency(self) -> bool:
        return self.minimize == "latency"

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The runtimes each candidate is measured in (the product's, and the one minimized)."""
        return (self.runtime,) if self.with_latency and self.runtime != runtimes.PRODUCT else ()


def _evaluate(engine, variant, config: AdvisorConfig) -> dict:
    return engine.evaluate(variant, with_latency=config.with_latency, runtimes=config.runtimes)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per-layer ranks (None: the layer stays dense), with the table's prediction."""

    ranks: tuple[tuple[str, int | None], ...]
    predicted_drop: float  # sum of single-layer drops, accuracy as a fraction
    cost: int  # dense-stack weights (MACs per image, likewise)

    def variant(self, finetune_steps: int = 0, int8: bool = False, basis: str = "weights") -> methods.Variant:
        chosen = tuple((n, k) for n, k in self.ranks if k is not None)
        configs = [_factorized(chosen, basis)] if chosen else []
        configs += [QuantizeConfig()] if int8 else []
        finetune = FinetuneConfig(steps=finetune_steps) if finetune_steps else None
        return methods.Variant.chain(*configs, finetune=finetune) if configs else methods.Variant.of(methods.REFERENCE)


def _factorized(chosen: tuple[tuple[str, int], ...], basis: str) -> SvdConfig:
    """SVD at ``chosen`` ranks (layer, rank), factorized, the other layers left as they are."""
    return SvdConfig(form="factorized", layer_ranks=chosen, only=tuple(n for n, _ in chosen), basis=basis)


def _front_step(sparsity: float) -> DeadUnitsConfig | PruneConfig:
    """The pruning in front of a pipeline: the lossless dead-unit removal at 0."""
    return DeadUnitsConfig() if sparsity == 0 else PruneConfig(sparsity=sparsity, structured=True)


def pipeline_variant(
    params,
    plan: Plan,
    sparsity: float,
    finetune_steps: int = 0,
    int8: bool = False,
    basis: str = "weights",
    shapes: dict[str, tuple[int, int]] | None = None,
) -> methods.Variant | None:
    """Structured pruning at ``sparsity`` (0: dead units only, lossless), then
    ``plan``'s SVD ranks in ``basis`` on the smaller matrices (a rank that no longer saves
    weights leaves its layer dense), then int8 if asked. None when nothing is
    left to factorize. ``shapes``: :func:`pruned_shapes` when already known."""
    shapes = shapes or pruned_shapes(params, sparsity)
    chosen = []
    for layer, rank in plan.ranks:
        m, n = shapes[layer]
        if rank is not None and rank * (m + n) < m * n:
            chosen.append((layer, rank))
    if not chosen:
        return None
    configs = [_front_step(sparsity), _factorized(tuple(chosen), basis)] + ([QuantizeConfig()] if int8 else [])
    return methods.Variant.chain(*configs, finetune=FinetuneConfig(steps=finetune_steps) if finetune_steps else None)


def pruned_shapes(params, sparsity: float) -> dict[str, tuple[int, int]]:
    """Each dense kernel's shape after :func:`_front_step`'s pruning at ``sparsity``."""
    config = _front_step(sparsity)
    if isinstance(config, DeadUnitsConfig):
        pruned = compress.drop_dead_units(params)
    else:
        pruned = compress.prune_structured(params, config.layers_of(params), config.sparsity)
    return {n: tuple(pruned[n]["w"].shape) for n in model.dense_layer_names(pruned)}


def plans(rows: list[dict], shapes: dict[str, tuple[int, int]], base_accuracy: float) -> list[Plan]:
    """The Pareto front of per-layer rank choices: fewest weights for each
    predicted total drop (single-layer drops from ``rows`` added up)."""
    front = [((), 0.0, 0)]  # (choices, drop, cost)
    for name, (m, n) in shapes.items():
        options = [(None, 0.0, m * n)]
        options += [
            (r["rank"], max(0.0, base_accuracy - r["accuracy"]), r["rank"] * (m + n))
            for r in rows
            if r["layer"] == name and r["rank"] * (m + n) < m * n
        ]
        merged = [
            (choices + ((name, rank),), drop + d, cost + c) for choices, drop, cost in front for rank, d, c in options
        ]
        merged.sort(key=lambda p: (p[1], p[2]))
        front, best = [], None
        for plan in merged:
            if best is None or plan[2] < best:
                front.append(plan)
                best = plan[2]
    return [Plan(choices, drop, cost) for choices, drop, cost in front]


def _cost(record: dict, minimize: str, runtime: str = runtimes.PRODUCT) -> float:
    if minimize != "latency":
        return record[minimize]
    timed = record if runtime == runtimes.PRODUCT else (record.get("runtimes") or {}).get(runtime, {})
    return timed.get("latency_ms", float("inf"))


def _summary(record: dict, base: dict, plan: Plan | None) -> dict:
    return {
        "label": record["label"],
        "method": record["method"],
        "accuracy": record["accuracy"],
        "drop_points": 100 * (base["accuracy"] - record["accuracy"]),
        "params": record["params"],
        "bytes": record["bytes"],
        "latency_ms": record.get("latency_ms"),
        "predicted_drop_points": None if plan is None else 100 * plan.predicted_drop,
        "ranks": record["facts"].get("ranks", {}),
    }


@dataclasses.dataclass
class _Search:
    """One basis's search: its Pareto front and every plan measured (in order); with
    ``sparsity``, each plan after that much structured pruning (:func:`pipeline_variant`)."""

    basis: str
    front: list[Plan]
    measured: dict[Plan, dict] = dataclasses.field(default_factory=dict)
    sparsity: float | None = None
    shapes: dict[str, tuple[int, int]] | None = None  # with sparsity: the pruned kernels' shapes

    def variant(self, engine, plan: Plan, config: "AdvisorConfig") -> methods.Variant | None:
        if self.sparsity is None:
            return plan.variant(config.finetune_steps, basis=self.basis)
        return pipeline_variant(
            engine.params, plan, self.sparsity, config.finetune_steps, basis=self.basis, shapes=self.shapes
        )


# The data bases' one-layer drops are measured at these fractions only; the rest of the grid is
# interpolated along each layer's predicted output error (a fifth of the table's cost).
ANCHOR_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.3)


def predicted_errors(energy: np.ndarray, ranks) -> np.ndarray:
    """A layer's relative output error on calibration data at each rank, from ``energy``, the
    output energy of each of its basis's directions in order (:meth:`Intermediates.output_energies`):
    Σ_{i>k} energy_i / Σ energy_i, exactly ‖X(W − W_k)‖² / ‖XW‖² of that basis's truncation."""
    energy = np.asarray(energy, np.float64)
    tail = energy.sum() - np.concatenate([[0.0], np.cumsum(energy)])
    return tail[np.minimum(np.asarray(ranks), energy.size)] / max(energy.sum(), 1e-30)


def anchored_rows(anchors: list[dict], energies: dict, shapes: dict, fractions, base_accuracy: float) -> list[dict]:
    """Rows like the sensitivity table's over ``fractions``: at each rank, the one-layer drop
    interpolated (in log predicted error) between the drops measured at ``anchors``' ranks, the
    smallest drop scaled down in proportion to the error below them. Ranks whose error lies
    beyond the largest measured one get no row: a drop there is not known (holding the last
    anchor's drop planned a rank-5 layer that lost 28 points)."""
    rows = []
    for name, energy in energies.items():
        measured = sorted({r["rank"]: r for r in anchors if r["layer"] == name}.values(), key=lambda r: r["rank"])
        errors = predicted_errors(energy, [r["rank"] for r in measured])
        drops = np.array([max(0.0, base_accuracy - r["accuracy"]) for r in measured])
        order = np.argsort(errors)
        log_e, drops = np.log(np.maximum(errors[order], 1e-12)), np.maximum.accumulate(drops[order])
        ranks = [compress.rank_for_fraction(f, *shapes[name]) for f in fractions]
        for rank, error in zip(ranks, predicted_errors(energy, ranks)):
            if error > np.exp(log_e[-1]) * (1 + 1e-9):
                continue
            if error < np.exp(log_e[0]):
                drop = drops[0] * error / max(np.exp(log_e[0]), 1e-12)
            else:
                drop = float(np.interp(np.log(max(error, 1e-12)), log_e, drops))
            rows.append({"layer": name, "rank": rank, "accuracy": base_accuracy - drop})
    return rows


def _front(engine, config: AdvisorConfig, basis: str, base: dict, report) -> list[Plan]:
    """Plans for ``basis`` from its one-layer drops: a few measured anchors per layer,
    interpolated along the output error each layer's truncation in that basis is predicted
    to make (:meth:`Intermediates.output_energies`, in closed form)."""
    shapes = {n: tuple(engine.params[n]["w"].shape) for n in engine.spec.dense_layers}
    table = svd_method.SENSITIVITY_BASIS[basis]
    anchors = engine.svd_sensitivity(
        ANCHOR_FRACTIONS, basis=table, on_progress=lambda d, t: report(f"{basis} basis: anchors", 0.4 * d / t)
    )
    report(f"{basis} basis: predicted output errors", 0.4)
    rows = anchored_rows(
        anchors, engine.intermediates.output_energies(table), shapes, config.fractions, base["accuracy"]
    )
    return plans(rows, shapes, base["accuracy"])


def _share_of(report, low: float, high: float):
    """``report`` for one part of the search: its shares 0…1 map onto ``low``…``high`` of the whole,
    so the progress bar only moves forward."""
    return lambda text, share: report(text, low + (high - low) * share)


def _within(base: dict, record: dict, config: AdvisorConfig) -> bool:
    return base["accuracy"] - record["accuracy"] <= config.max_drop / 100 + 1e-12


def _bisect(engine, config: AdvisorConfig, search: _Search, base: dict, start: float, report, limit=None) -> None:
    """Measures at most ``limit`` (default ``config.max_measurements``) plans of ``search.front``:
    bisection on the predicted budget against measured drops (the budget may grow past the
    target: fine-tuning, a refit or the pruning's slack recovers part of the predicted drop),
    then plans cheaper than the best answer, least predicted drop first."""
    limit = limit or config.max_measurements
    front = [p for p in search.front if search.variant(engine, p, config) is not None]
    what = search.basis if search.sparsity is None else f"{search.basis}, pruned {search.sparsity:.0%}"

    def measure(plan: Plan) -> bool:
        if plan not in search.measured:
            report(f"{what} basis: candidate {len(search.measured) + 1}", 0.4 + 0.6 * len(search.measured) / limit)
            search.measured[plan] = _evaluate(engine, search.variant(engine, plan, config), config)
        return _within(base, search.measured[plan], config)

    def pick(budget: float) -> Plan:
        return min((p for p in front if p.predicted_drop <= budget), key=lambda p: p.cost)

    if not front:
        return
    low, high, budget = 0.0, None, max(start, front[0].predicted_drop)
    ceiling = max(p.predicted_drop for p in front)
    for _ in range(max(1, limit // 2)):
        if measure(pick(budget)):
            low = budget
            budget = min(ceiling, budget * 2 if high is None else (budget + high) / 2)
        else:
            high, budget = budget, (low + budget) / 2
    while len(search.measured) < limit:
        best = min((p.cost for p, r in search.measured.items() if _within(base, r, config)), default=None)
        cheaper = [p for p in front if p not in search.measured and (best is None or p.cost < best)]
        if not cheaper:
            break
        measure(min(cheaper, key=lambda p: p.predicted_drop))


def _best(searches: list[_Search], base: dict, config: AdvisorConfig) -> tuple[_Search, Plan, dict] | None:
    meeting = [(s, p, r) for s in searches for p, r in s.measured.items() if _within(base, r, config)]
    if not meeting:
        return None
    return min(meeting, key=lambda spr: _cost(spr[2], config.minimize, config.runtime))


def _pipelines(engine, config: AdvisorConfig, plan: Plan, base: dict, report, basis: str) -> list[tuple[float, dict]]:
    """Structured pruning first, then ``plan``'s ranks in ``basis`` on the smaller matrices (the
    data bases calibrate each kept kernel on the inputs it kept; the calibrated refit fits the
    kept units to the original ones, correcting the pruning too). A bisection over the sparsities
    (more pruning only drops more) finds the largest within the drop in ⌈log2(n + 1)⌉ measurements."""
    out = []
    below, above = -1, len(PIPELINE_SPARSITIES)  # within the drop at ``below``, outside it at ``above``
    while above - below > 1:
        middle = (below + above) // 2
        sparsity = PIPELINE_SPARSITIES[middle]
        variant = pipeline_variant(engine.params, plan, sparsity, config.finetune_steps, basis=basis)
        if variant is None:  # the ranks no longer save weights on matrices this small
            above = middle
            continue
        report(f"{basis} basis, pipeline {len(out) + 1}: structured pruning {sparsity:.0%}, then SVD", 0.87)
        record = _evaluate(engine, variant, config)
        out.append((sparsity, record))
        below, above = (middle, above) if _within(base, record, config) else (below, middle)
    return out


def _every_pipeline(engine, config: AdvisorConfig, searches: list[_Search], base: dict, report) -> list[tuple]:
    """(basis, sparsity, plan, record) of the pipelines measured on each basis's best plan."""
    out = []
    for search in searches:
        if best := _best([search], base, config):
            out += [
                (search.basis, sp, best[1], r)
                for sp, r in _pipelines(engine, config, best[1], base, report, search.basis)
            ]
    return out


def _pruned_search(engine, config: AdvisorConfig, searches, pipelines, base: dict, report) -> list[_Search]:
    """The best pipeline's basis searched again with its pruning in front: its ranks were chosen
    without pruning, and the pruning may leave room for cheaper ones (half the measurements)."""
    within = [(b, sp, p, r) for b, sp, p, r in pipelines if _within(base, r, config)]
    if not within:
        return []
    basis, sparsity, plan, record = min(within, key=lambda c: _cost(c[3], config.minimize, config.runtime))
    front = next(s.front for s in searches if s.basis == basis)
    search = _Search(basis, front, {plan: record}, sparsity, pruned_shapes(engine.params, sparsity))
    _bisect(engine, config, search, base, plan.predicted_drop, report, limit=max(2, config.max_measurements // 2))
    return [search]


def smallest_within(engine, config: AdvisorConfig, on_progress: Callable[[str, float], None] | None = None) -> dict:
    """The smallest measured variant (by ``config.minimize``) within ``config.max_drop``
    points of the baseline, over every SVD basis in ``config.bases`` and pipelines. Returns
    the answer's measured record with ``advisor``: the search (every candidate measured with
    its predicted and measured drop, which basis and steps won and by how much, the baseline,
    the answer with int8 on top)."""
    report = on_progress or (lambda text, share: None)
    base = _evaluate(engine, methods.Variant.of(methods.REFERENCE), config)
    searches: list[_Search] = []
    n = len(config.bases)
    for i, basis in enumerate(config.bases):
        part = _share_of(report, 0.85 * i / n, 0.85 * (i + 1) / n)
        search = _Search(basis, _front(engine, config, basis, base, part))
        _bisect(engine, config, search, base, config.max_drop / 100, part)
        searches.append(search)
    pipelines = _every_pipeline(engine, config, searches, base, report) if PRUNE in config.methods else []
    pruned = _pruned_search(engine, config, searches, pipelines, base, _share_of(report, 0.9, 0.97))
    best = _best(searches + pruned, base, config)
    answer, plan = (base, None) if best is None else (best[2], best[1])
    for _basis, _sparsity, pipeline_plan, record in pipelines:
        if _within(base, record, config) and _cost(record, config.minimize, config.runtime) < _cost(
            answer, config.minimize, config.runtime
        ):
            answer, plan = record, pipeline_plan
    pipelines += [(s.basis, s.sparsity, p, r) for s in pruned for p, r in s.measured.items()]
    int8 = None
    if INT8 in config.methods and plan is not None:
        report("int8 on top", 0.98)
        int8 = _evaluate(engine, methods.Variant.from_dict(answer).with_storage(), config)
        if config.minimize == "bytes" and _within(base, int8, config):
            answer = int8
    report("done", 1.0)
    return {**answer, "advisor": _smallest_summary(config, base, searches, pipelines, int8, best is not None, answer)}


def _winner(answer: dict, by_basis: dict, config: AdvisorConfig) -> dict:
    """Which basis and steps won, and by how much against the best of each other basis."""
    steps = answer.get("steps") or [{"method": answer["method"], "config": answer.get("config") or {}}]
    basis = next((s["config"].get("basis") for s in steps if "basis" in s["config"]), None)
    cost = _cost(answer, config.minimize, config.runtime)
    against = {b: _cost(r, config.minimize, config.runtime) / cost for b, r in by_basis.items() if r and cost}
    return {"label": answer["label"], "steps": [s["method"] for s in steps], "basis": basis, "cost_ratio": against}


def _smallest_summary(config, base, searches, pipelines, int8, found, answer) -> dict:
    points = f"{config.max_drop:g} accuracy point{'' if config.max_drop == 1 else 's'}"
    by_basis = {}
    for search in searches:
        best = _best([search], base, config)
        by_basis[search.basis] = None if best is None else _summary(best[2], base, best[1])
    return {
        "question": f"smallest by {config.minimize} within {points} of the baseline",
        "config": dataclasses.asdict(config),
        "baseline": _summary(base, base, None),
        "candidates": [dict(_summary(r, base, p), basis=s.basis) for s in searches for p, r in s.measured.items()],
        "pipelines": [dict(_summary(r, base, None), basis=b, sparsity=sp) for b, sp, _, r in pipelines],
        "best_by_basis": by_basis,
        "winner": _winner(answer, by_basis, config),
        "with_int8": None if int8 is None else _summary(int8, base, None),
        "found": found,
        "n_test": base["n_test"],
    }


def most_accurate_within(
    engine, budget_share: float, config: AdvisorConfig, on_progress: Callable[[str, float], None] | None = None
) -> dict:
    """The most accurate measured variant whose ``config.minimize`` cost is at
    most ``budget_share`` of the baseline's (params and bytes; for latency the
    dense stack's MACs choose the candidates, measured latency decides)."""
    if not (isinstance(budget_share, (int, float)) and 0 < budget_share <= 1):
        raise ConfigError(f"the budget must be a share in (0, 1] of the baseline, got {budget_share}")
    report = on_progress or (lambda text, share: None)
    base = _evaluate(engine, methods.Variant.of(methods.REFERENCE), config)
    shapes = {n: tuple(engine.params[n]["w"].shape) for n in engine.spec.dense_layers}
    dense_cost = sum(m * n for m, n in shapes.values())
    limit = budget_share * _cost(base, config.minimize, config.runtime)
    int8 = INT8 in config.methods and config.minimize == "bytes"
    # The cheapest-to-check proxy first: plans whose dense weights fit the share, least predicted drop first.
    proxy_limit = budget_share * dense_cost * (2 if int8 else 1)
    measured = []
    per_basis = max(1, config.max_measurements // len(config.bases))
    for i, basis in enumerate(config.bases):
        front = _front(
            engine,
            config,
            basis,
            base,
            _share_of(report, 0.5 * i / len(config.bases), 0.5 * (i + 1) / len(config.bases)),
        )
        candidates = sorted((p for p in front if p.cost <= proxy_limit), key=lambda p: p.predicted_drop)
        for plan in candidates[:per_basis]:
            report(f"{basis} basis: candidate {len(measured) + 1}", 0.5 + 0.5 * len(measured) / config.max_measurements)
            record = _evaluate(engine, plan.variant(config.finetune_steps, int8=int8, basis=basis), config)
            measured.append((plan, basis, record))
    fitting = [(p, r) for p, _, r in measured if _cost(r, config.minimize, config.runtime) <= limit]
    report("done", 1.0)
    answer = max(fitting, key=lambda pr: pr[1]["accuracy"])[1] if fitting else base
    search = {
        "question": f"most accurate within {budget_share:.1%} of the baseline's {config.minimize}",
        "config": dataclasses.asdict(config),
        "baseline": _summary(base, base, None),
        "candidates": [dict(_summary(r, base, p), basis=b) for p, b, r in measured],
        "found": bool(fitting),
        "n_test": base["n_test"],
    }
    return {**answer, "advisor": search}
