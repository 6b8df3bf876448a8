"""The compression advisor: per-layer SVD ranks chosen from the per-layer
sensitivity table, then pipelines (structured pruning before the SVD) and int8
storage on top, every reported candidate measured on the full test set.

1. :meth:`Engine.svd_sensitivity` measures each dense layer truncated alone.
2. Assuming drops add up across layers (the Low-rank page shows how well they
   do), a Pareto merge over layers gives, for any total predicted drop, the
   per-layer ranks with the fewest parameters (a layer may also stay dense) —
   the selection Qualcomm AIMET's greedy compression-ratio search approximates,
   here solved exactly over the measured grid.
3. The predicted budget is then searched by bisection against *measured*
   drops: each candidate is built and measured like any variant (cached, on
   the Pareto chart, in Compare & export); the answer is the best measured one
   that meets the target. Predictions only choose what to measure; they are
   never reported as results.
4. With "prune": structured pruning (the lossless dead-unit removal, or the
   weakest 30…70 % of hidden units), then the answer's ranks on the smaller
   matrices, each measured; the sparsity is bisected (more pruning only drops
   more), and the smallest measured pipeline within the target wins. With
   "quantize": int8 on top of the answer, measured.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from lowrank_core import methods, runtimes, sensitivity
from lowrank_core.errors import ConfigError
from lowrank_core.finetune import FinetuneConfig
from lowrank_core.methods.svd import SvdConfig

MINIMIZE = ("params", "bytes", "latency")
SEARCHABLE = ("svd", "prune", "quantize")
# Structured pruning before SVD: drop the weakest hidden units (dead ones first: zero norm), then
# truncate what is left at the chosen ranks. 0 stands for the lossless dead-unit removal.
PIPELINE_SPARSITIES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7)


@dataclasses.dataclass(frozen=True)
class AdvisorConfig:
    """``max_drop`` in accuracy points below the baseline (1.0 = one point);
    ``budget`` (for :func:`most_accurate`) a share of the baseline's cost."""

    max_drop: float = 1.0
    minimize: str = "params"
    methods: tuple[str, ...] = ("svd", "prune", "quantize")
    finetune_steps: int = 0
    max_measurements: int = 8
    fractions: tuple[float, ...] = sensitivity.DEFAULT_FRACTIONS
    basis: str = "weights"  # or "activations": see lowrank_core.methods.svd.BASES
    runtime: str = runtimes.PRODUCT  # whose measured latency ``minimize="latency"`` minimizes

    def __post_init__(self):
        if not (isinstance(self.max_drop, (int, float)) and 0 <= self.max_drop <= 100):
            raise ConfigError(f"max drop must be between 0 and 100 accuracy points, got {self.max_drop}")
        if self.minimize not in MINIMIZE:
            raise ConfigError(f"minimize must be one of {', '.join(MINIMIZE)}, got {self.minimize!r}")
        unknown = [m for m in self.methods if m not in SEARCHABLE]
        if unknown or "svd" not in self.methods:
            raise ConfigError(f"the advisor searches svd (required), prune and quantize; got {', '.join(self.methods)}")
        if not (isinstance(self.finetune_steps, int) and 0 <= self.finetune_steps <= 5000):
            raise ConfigError(f"fine-tuning steps must be an integer in 0..5000, got {self.finetune_steps}")
        if not (isinstance(self.max_measurements, int) and 1 <= self.max_measurements <= 50):
            raise ConfigError("max_measurements must be an integer in 1..50")
        SvdConfig(basis=self.basis)  # validates it
        runtimes.get(self.runtime)

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
        steps = []
        if chosen:
            only = tuple(n for n, _ in chosen)
            steps.append(("svd", SvdConfig(form="factorized", layer_ranks=chosen, only=only, basis=basis)))
        if int8:
            steps.append(("quantize", methods.REGISTRY["quantize"].config_type()))
        finetune = FinetuneConfig(steps=finetune_steps) if finetune_steps else None
        if not steps:
            steps.append(("baseline", methods.REGISTRY["baseline"].config_type()))
        return methods.Variant(tuple(steps), finetune)


def _front_step(sparsity: float) -> tuple[str, object]:
    if sparsity == 0:
        return ("dead_units", methods.REGISTRY["dead_units"].config_type())
    return ("prune", methods.REGISTRY["prune"].config_type(sparsity=sparsity, structured=True))


def pipeline_variant(
    params, plan: Plan, sparsity: float, finetune_steps: int = 0, int8: bool = False
) -> methods.Variant | None:
    """Structured pruning at ``sparsity`` (0: dead units only, lossless), then
    ``plan``'s SVD ranks on the smaller matrices (a rank that no longer saves
    weights leaves its layer dense), then int8 if asked. None when nothing is
    left to factorize."""
    from lowrank_core import compress

    name, config = _front_step(sparsity)
    pruned = compress.drop_dead_units(params) if name == "dead_units" else compress.prune_structured(params, config)
    chosen = []
    for layer, rank in plan.ranks:
        m, n = pruned[layer]["w"].shape
        if rank is not None and rank * (m + n) < m * n:
            chosen.append((layer, rank))
    if not chosen:
        return None
    steps = [(name, config), ("svd", SvdConfig(form="factorized", layer_ranks=tuple(chosen),
                                               only=tuple(n for n, _ in chosen)))]  # fmt: skip
    if int8:
        steps.append(("quantize", methods.REGISTRY["quantize"].config_type()))
    return methods.Variant(tuple(steps), FinetuneConfig(steps=finetune_steps) if finetune_steps else None)


def plans(rows: list[dict], shapes: dict[str, tuple[int, int]], base_accuracy: float) -> list[Plan]:
    """The Pareto front of per-layer rank choices: fewest weights for each
    predicted total drop (single-layer drops from ``rows`` added up)."""
    front = [((), 0.0, 0)]  # (choices, drop, cost)
    for name, (m, n) in shapes.items():
        options = [(None, 0.0, m * n)]
        options += [(r["rank"], max(0.0, base_accuracy - r["accuracy"]), r["rank"] * (m + n))
                    for r in rows if r["layer"] == name and r["rank"] * (m + n) < m * n]  # fmt: skip
        merged = [(choices + ((name, rank),), drop + d, cost + c)
                  for choices, drop, cost in front for rank, d, c in options]  # fmt: skip
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
    return {"label": record["label"], "method": record["method"], "accuracy": record["accuracy"],
            "drop_points": 100 * (base["accuracy"] - record["accuracy"]), "params": record["params"],
            "bytes": record["bytes"], "latency_ms": record.get("latency_ms"),
            "predicted_drop_points": None if plan is None else 100 * plan.predicted_drop,
            "ranks": record["facts"].get("ranks", {})}  # fmt: skip


def smallest_within(engine, config: AdvisorConfig, on_progress: Callable[[str, float], None] | None = None) -> dict:
    """The smallest measured variant (by ``config.minimize``) within
    ``config.max_drop`` points of the baseline. Returns the answer's measured
    record with ``advisor``: the search (every candidate measured, baseline,
    the same ranks with int8 on top)."""
    report = on_progress or (lambda text, share: None)
    base = _evaluate(engine, methods.Variant.of("baseline"), config)
    report("per-layer sensitivity", 0.0)
    rows = engine.svd_sensitivity(
        config.fractions, on_progress=lambda d, t: report("per-layer sensitivity", 0.5 * d / t), basis=config.basis
    )
    names = list(engine.spec.dense_layers)
    shapes = {n: tuple(engine.params[n]["w"].shape) for n in names}
    front = plans(rows, shapes, base["accuracy"])
    target = config.max_drop / 100
    measured: dict[Plan, dict] = {}

    def measure(plan: Plan) -> dict:
        if plan not in measured:
            report(f"measuring candidate {len(measured) + 1}", 0.5 + 0.5 * len(measured) / config.max_measurements)
            measured[plan] = _evaluate(engine, plan.variant(config.finetune_steps, basis=config.basis), config)
        return measured[plan]

    def pick(budget: float) -> Plan:
        return min((p for p in front if p.predicted_drop <= budget), key=lambda p: p.cost)

    def feasible(plan: Plan) -> bool:
        return base["accuracy"] - measured[plan]["accuracy"] <= target + 1e-12

    # 1. Bisection on the predicted budget against measured drops (fine-tuning
    #    recovers part of the drop, so the budget may grow past the target).
    low, high, budget = 0.0, None, target
    ceiling = max(p.predicted_drop for p in front)
    for _ in range(max(1, config.max_measurements // 2)):
        plan = pick(budget)
        measure(plan)
        if feasible(plan):
            low = budget
            budget = min(ceiling, budget * 2 if high is None else (budget + high) / 2)
        else:
            high = budget
            budget = (low + budget) / 2
    # 2. Refinement: plans cheaper than the best measured answer, least predicted drop first.
    while len(measured) < config.max_measurements:
        best = min((p.cost for p in measured if feasible(p)), default=None)
        cheaper = sorted((p for p in front if p not in measured and (best is None or p.cost < best)),
                         key=lambda p: p.predicted_drop)  # fmt: skip
        if not cheaper:
            break
        measure(cheaper[0])
    meeting = [(plan, r) for plan, r in measured.items() if feasible(plan)]
    if meeting:
        plan, answer = min(meeting, key=lambda pr: _cost(pr[1], config.minimize, config.runtime))
    else:
        plan, answer = None, base
    within = lambda record: base["accuracy"] - record["accuracy"] <= target + 1e-12  # noqa: E731
    # 3. Pipelines: structured pruning first, then the same ranks on smaller matrices (weights
    #    basis: the activation basis calibrates the checkpoint's own layer shapes).
    pipelines: list[dict] = []
    sparsity = None
    if "prune" in config.methods and plan is not None and config.basis == "weights":
        # Bisection over the sparsities (more pruning only drops more): the largest one within the
        # drop in ⌈log2(n + 1)⌉ measurements, each a new set of SVDs of the pruned matrices.
        below, above = -1, len(PIPELINE_SPARSITIES)  # within the drop at ``below``, outside it at ``above``
        while above - below > 1:
            middle = (below + above) // 2
            s = PIPELINE_SPARSITIES[middle]
            variant = pipeline_variant(engine.params, plan, s, config.finetune_steps)
            if variant is None:  # the ranks no longer save weights on matrices this small
                above = middle
                continue
            report(f"pipeline {len(pipelines) + 1}: structured pruning {s:.0%}, then SVD", 0.9)
            record = _evaluate(engine, variant, config)
            pipelines.append(record)
            if within(record):
                below = middle
                if _cost(record, config.minimize, config.runtime) < _cost(answer, config.minimize, config.runtime):
                    answer, sparsity = record, s
            else:
                above = middle
    int8 = None
    if "quantize" in config.methods and plan is not None:
        report("int8 on top", 0.98)
        variant = (plan.variant(config.finetune_steps, int8=True, basis=config.basis) if sparsity is None
                   else pipeline_variant(engine.params, plan, sparsity, config.finetune_steps, int8=True))  # fmt: skip
        int8 = _evaluate(engine, variant, config)
        if config.minimize == "bytes" and within(int8):
            answer = int8
    report("done", 1.0)
    points = f"{config.max_drop:g} accuracy point{'' if config.max_drop == 1 else 's'}"
    search = {"question": f"smallest by {config.minimize} within {points} of the baseline",
              "config": dataclasses.asdict(config), "baseline": _summary(base, base, None),
              "candidates": [_summary(r, base, p) for p, r in measured.items()],
              "pipelines": [_summary(r, base, None) for r in pipelines],
              "with_int8": None if int8 is None else _summary(int8, base, plan),
              "found": bool(meeting), "n_test": base["n_test"]}  # fmt: skip
    return {**answer, "advisor": search}


def most_accurate_within(engine, budget_share: float, config: AdvisorConfig,
                         on_progress: Callable[[str, float], None] | None = None) -> dict:  # fmt: skip
    """The most accurate measured variant whose ``config.minimize`` cost is at
    most ``budget_share`` of the baseline's (params and bytes; for latency the
    dense stack's MACs choose the candidates, measured latency decides)."""
    if not (isinstance(budget_share, (int, float)) and 0 < budget_share <= 1):
        raise ConfigError(f"the budget must be a share in (0, 1] of the baseline, got {budget_share}")
    report = on_progress or (lambda text, share: None)
    base = _evaluate(engine, methods.Variant.of("baseline"), config)
    rows = engine.svd_sensitivity(
        config.fractions, on_progress=lambda d, t: report("per-layer sensitivity", 0.5 * d / t), basis=config.basis
    )
    names = list(engine.spec.dense_layers)
    shapes = {n: tuple(engine.params[n]["w"].shape) for n in names}
    front = plans(rows, shapes, base["accuracy"])
    dense_cost = sum(m * n for m, n in shapes.values())
    limit = budget_share * _cost(base, config.minimize, config.runtime)
    int8 = "quantize" in config.methods and config.minimize == "bytes"
    # The cheapest-to-check proxy first: plans whose dense weights fit the share, least predicted drop first.
    proxy_limit = budget_share * dense_cost * (2 if int8 else 1)
    candidates = sorted((p for p in front if p.cost <= proxy_limit), key=lambda p: p.predicted_drop)
    measured = []
    for i, plan in enumerate(candidates[: config.max_measurements]):
        report(f"measuring candidate {i + 1}", 0.5 + 0.5 * i / config.max_measurements)
        record = _evaluate(engine, plan.variant(config.finetune_steps, int8=int8, basis=config.basis), config)
        measured.append((plan, record))
    fitting = [(p, r) for p, r in measured if _cost(r, config.minimize, config.runtime) <= limit]
    report("done", 1.0)
    answer = max(fitting, key=lambda pr: pr[1]["accuracy"])[1] if fitting else base
    search = {"question": f"most accurate within {budget_share:.1%} of the baseline's {config.minimize}",
              "config": dataclasses.asdict(config), "baseline": _summary(base, base, None),
              "candidates": [_summary(r, base, p) for p, r in measured], "found": bool(fitting),
              "n_test": base["n_test"]}  # fmt: skip
    return {**answer, "advisor": search}
