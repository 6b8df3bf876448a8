"""``python -m lowrank_core bench``: speed measured as ratios, in one run.

Every row compares two sides on identical inputs, timed alternately in this
process after warm-up (compile time excluded), and checks that both give the
same predictions. It prints a markdown table and writes the same as JSON.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_core import advisor, bench_runtimes, configs, evaluation, measure, methods, model, runtimes, train
from lowrank_core.data import Cifar10
from lowrank_core.methods import Variant, svd

FRACTIONS = (1.0, 0.5, 0.25, 0.1, 0.05)


def _alternate(sides: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Times each side ``repeats`` times, interleaved, after one warm-up call each."""
    for fn in sides.values():
        jax.block_until_ready(fn())
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            started = time.perf_counter()
            jax.block_until_ready(fn())
            samples[name].append(time.perf_counter() - started)
    return samples


def _summary(samples: list[float]) -> dict:
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {"median_s": float(median), "iqr_s": float(q3 - q1), "repeats": len(samples)}


def _ratio(slow: list[float], fast: list[float]) -> dict:
    """Median and IQR of per-repeat ratios (each pair timed back to back)."""
    ratios = np.asarray(slow) / np.asarray(fast)
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def bench_inference(params, images: np.ndarray, repeats: int = 3) -> dict:
    """Row 1: the product's test-set path vs a plain jitted ``network.apply`` in batches of 1,000."""
    plain = jax.jit(lambda p, x: jnp.argmax(model.network.apply(p, model.preprocess(x)), axis=-1))
    device_params = jax.device_put(params)

    def plain_path():
        return np.concatenate(
            [np.asarray(plain(device_params, images[i : i + 1000])) for i in range(0, len(images), 1000)]
        )

    def product_path():
        return measure.predict_full(params, images)

    same = float(np.mean(plain_path() == product_path()))
    samples = _alternate({"plain": plain_path, "product": product_path}, repeats)
    return {
        "row": "test-set inference",
        "images": int(len(images)),
        "same_argmax": same,
        "plain": _summary(samples["plain"]),
        "product": _summary(samples["product"]),
        "speedup": _ratio(samples["plain"], samples["product"]),
        "target": 2.5,
    }


def bench_factorized(
    params, features: np.ndarray, svds, fractions=FRACTIONS, batch_sizes=(1, 1000), repeats: int = 7
) -> list[dict]:
    """Row 2: the dense stack factorized at each rank fraction vs dense, measured and theoretical."""
    dense_fn = jax.jit(model.dense_forward)
    dense = jax.device_put(measure.dense_params(params))
    rows = []
    dense_macs = measure.macs_per_image(params) - measure.conv_macs(params)
    for fraction in fractions:
        variant = svd.svd_compress(params, svd.SvdConfig(fraction, "factorized"), svds)
        factorized = jax.device_put(measure.dense_params(variant))
        # The same rank as one dense matrix per layer: the function the factorized form must match.
        reconstructed = jax.device_put(
            measure.dense_params(svd.svd_compress(params, svd.SvdConfig(fraction, "reconstructed"), svds))
        )
        theoretical = dense_macs / (measure.macs_per_image(variant) - measure.conv_macs(params))
        for batch_size in batch_sizes:
            x = jax.device_put(features[:batch_size])
            same = float(np.mean(np.argmax(dense_fn(reconstructed, x), -1) == np.argmax(dense_fn(factorized, x), -1)))
            samples = _alternate(
                {"dense": lambda x=x: dense_fn(dense, x), "factorized": lambda x=x, f=factorized: dense_fn(f, x)},
                repeats,
            )
            speedup = _ratio(samples["dense"], samples["factorized"])
            rows.append(
                {
                    "row": "factorized vs dense",
                    "rank_fraction": fraction,
                    "batch_size": batch_size,
                    "dense": _summary(samples["dense"]),
                    "factorized": _summary(samples["factorized"]),
                    "speedup": speedup,
                    "theoretical": theoretical,
                    "measured_over_theoretical": speedup["median"] / theoretical,
                    "argmax_agreement_with_reconstructed": same,
                }
            )
    return rows


def bench_training(data: Cifar10, steps: int = 15) -> dict:
    """Row 3 (projection): step rate of the default and seed presets, timed alternately;
    projected wall time = preset steps × median step time."""
    out = {}
    sides = {}
    states = {}
    for name in ("default", "seed"):
        config = configs.get_preset(name)
        optimizer = train.make_optimizer(config)
        update = train.make_update(config, optimizer)
        state = train.init_state(config, optimizer, data.x_train)
        images = jnp.asarray(data.x_train[: config.batch_size])
        labels = jnp.asarray(data.y_train[: config.batch_size])
        states[name] = state

        def step(update=update, name=name, images=images, labels=labels):
            states[name], loss = update(states[name], images, labels)
            return loss

        sides[name] = step
        out[name] = {"steps": config.num_steps, "batch_size": config.batch_size}
    samples = _alternate(sides, steps)
    for name in sides:
        median = float(np.median(samples[name]))
        out[name].update(step_s=_summary(samples[name]), projected_minutes=median * out[name]["steps"] / 60)
    out["row"] = "training (projected from step rate)"
    out["projected_speedup"] = out["seed"]["projected_minutes"] / out["default"]["projected_minutes"]
    return out


class TrainingPoint(NamedTuple):
    """A point of :func:`_clocked_training`: the params to evaluate and the clock so far."""

    step: int
    epochs: float
    train_s: float  # initialization included
    init_s: float
    params: dict


def _clocked_training(config: configs.TrainConfig, data: Cifar10, eval_every: int) -> Iterator[TrainingPoint]:
    """Trains ``config``, yielding a :class:`TrainingPoint` every ``eval_every`` steps and at the
    last; the clock runs over initialization and steps (compile included) and stops while the
    caller evaluates."""
    optimizer = train.make_optimizer(config)
    update = train.make_update(config, optimizer)
    x_train, y_train, _, _ = train.split_train_validation(data, config)
    started = time.perf_counter()
    state = train.init_state(config, optimizer, x_train)
    jax.block_until_ready(state.params)
    init_s = train_s = time.perf_counter() - started
    stream = train.batches(x_train, y_train, config.batch_size, config.seed)
    for step in range(1, config.num_steps + 1):
        started = time.perf_counter()
        state, _ = update(state, *next(stream))
        due = step % eval_every == 0 or step == config.num_steps
        if due:
            jax.block_until_ready(state.params)
        train_s += time.perf_counter() - started
        if due:
            params = state.avg_params if config.eval_params == "ema" else state.params
            yield TrainingPoint(step, step * config.batch_size / x_train.shape[0], train_s, init_s, params)


def bench_time_to_accuracy(
    data: Cifar10,
    preset: str | configs.TrainConfig = "default",
    target: float = 0.66,
    eval_every: int = 100,
    log: Callable[[str], None] = print,
) -> dict:
    """Row 3 (measured): wall time of ``preset`` (a preset name or a config)
    until its evaluated params first reach ``target`` accuracy on the whole test set.

    The clock runs over the initialization (a data-dependent one costs
    seconds) and the training steps (compile included, as a user waits for
    it) and stops while the test set is evaluated every ``eval_every`` steps;
    the run ends at the target or at the config's last step.
    """
    config = configs.get_preset(preset) if isinstance(preset, str) else preset
    curve, reached, init_s = [], None, None
    for point in _clocked_training(config, data, eval_every):
        init_s = point.init_s
        accuracy = evaluation.accuracy(point.params, data.x_test, data.y_test)
        curve.append({"step": point.step, "epochs": point.epochs, "train_s": point.train_s, "test_accuracy": accuracy})
        log(f"  {config.preset} step {point.step}: {point.train_s:.0f} s, test accuracy {accuracy:.4f}")
        if accuracy >= target:
            reached = curve[-1]
            break
    return {
        "row": "training to accuracy",
        "preset": config.preset,
        "config": config.to_dict(),
        "target": target,
        "eval_every": eval_every,
        "init_s": init_s,
        "reached": reached,
        "curve": curve,
        "batch_size": config.batch_size,
        "steps": config.num_steps,
    }


# Short recipes for the "recipes" row: how few training images can reach the
# target at all with this network? Every recipe decays its learning rate to 0
# at its own horizon (the best use of a fixed budget), from the default preset.
RECIPE_HORIZONS = (1.0, 1.5, 2.0)  # epochs of the 45,000 training images
RECIPE_SETTINGS = (  # (batch size, peak learning rate, augmentation)
    (32, 5e-4, "none"),
    (64, 5e-4, "none"),
    (64, 1e-3, "none"),
    (128, 1e-3, "none"),
    (128, 2e-3, "none"),
    (128, 1e-3, "flip"),
    (256, 2e-3, "none"),
)


def recipe_grid(
    images_per_epoch: int = 45_000,
    horizons=RECIPE_HORIZONS,
    settings=RECIPE_SETTINGS,
    warmup_fraction: float = 0.1,
    base: configs.TrainConfig | None = None,
) -> list[configs.TrainConfig]:
    """``base`` (default: the default preset) with each (batch size, peak lr,
    augmentation) and horizon: warm-up over ``warmup_fraction`` of the steps,
    cosine decay to 0 at the end."""
    default = base or configs.get_preset("default")
    grid = []
    for epochs in horizons:
        for batch_size, learning_rate, augment in settings:
            steps = max(1, round(epochs * images_per_epoch / batch_size))
            grid.append(
                dataclasses.replace(
                    default,
                    preset=f"bs{batch_size} lr{learning_rate:g} {augment} {epochs:g}ep",
                    batch_size=batch_size,
                    num_steps=steps,
                    learning_rate=learning_rate,
                    warmup_steps=round(warmup_fraction * steps),
                    augment=augment,
                    eval_every=steps,
                )
            )
    return grid


def bench_recipes(
    data: Cifar10,
    grid: list[configs.TrainConfig],
    target: float = 0.66,
    eval_images: int = 4500,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Row 3 (context): every config of ``grid`` trained until ``target`` or its
    end, whole test set evaluated about every ``eval_images`` training images.
    Answers how many epochs this network needs to reach the target at all."""
    runs = []
    for config in grid:
        log(f"recipe {config.preset} …")
        runs.append(bench_time_to_accuracy(data, config, target, max(1, eval_images // config.batch_size), log))
    return runs


def bench_scaling(params, images: np.ndarray, batch_sizes=(1, 10, 100, 1000, 10_000)) -> list[dict]:
    """Row 5: whole-network latency vs batch size (per image cost shows the batching win)."""
    rows = []
    forward = jax.jit(measure.fast_forward)  # the product's path, as the app's latency figures
    device_params = jax.device_put(params)
    for batch_size in batch_sizes:
        x = jax.device_put(images[:batch_size])
        stats = measure.time_calls(lambda x=x: forward(device_params, x), repeats=5 if batch_size < 10_000 else 3)
        rows.append(
            {
                "row": "latency vs batch",
                "batch_size": batch_size,
                "median_ms": stats["median_ms"],
                "iqr_ms": stats["iqr_ms"],
                "per_image_ms": stats["median_ms"] / batch_size,
            }
        )
    return rows


def bench_sweep_scaling(engine, points=(1, 2, 4)) -> list[dict]:
    """Row 5b: wall time of an uncached accuracy-only SVD sweep vs number of grid points."""
    rows = []
    for n in points:
        grid = np.linspace(0.3, 0.9, n)
        started = time.perf_counter()
        for f in grid:
            variant = Variant.chain(svd.SvdConfig(float(round(f, 6)), "factorized"))
            engine.evaluate(variant, with_latency=False, use_cache=False)
        rows.append({"row": "sweep time vs points", "points": n, "seconds": time.perf_counter() - started})
    return rows


def environment() -> dict:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
    }


def _duration(minutes: float) -> str:
    return f"{minutes:.1f} min" if minutes >= 1 else f"{60 * minutes:.1f} s"


COMPARISON_HEADER = [
    "| comparison | ratio (median, IQR) | target | absolute | same predictions |",
    "|---|---|---|---|---|",
]


def _speed_lines(report: dict) -> list[str]:
    """The machine line and the inference and factorized comparison rows."""
    lines = [
        f"Machine: {report['environment']['cpus']} CPUs, {report['environment']['backend']} "
        f"({report['environment']['device']}), jax {report['environment']['jax']}",
        "",
    ]
    lines += COMPARISON_HEADER
    inf = report.get("inference")
    if inf:
        s = inf["speedup"]
        lines.append(
            f"| test-set inference ({inf['images']:,} images): product path vs plain `net.apply` (batches of 1,000) "
            f"| **{s['median']:.2f}×** ({s['q1']:.2f}–{s['q3']:.2f}) | ≥ {inf['target']}× "
            f"| {inf['product']['median_s']:.2f} s vs {inf['plain']['median_s']:.2f} s "
            f"| {100 * inf['same_argmax']:.2f} % same argmax |"
        )
    for row in report.get("factorized", []):
        s = row["speedup"]
        lines.append(
            f"| dense stack factorized at f={row['rank_fraction']} vs dense, batch {row['batch_size']} "
            f"| **{s['median']:.2f}×** ({s['q1']:.2f}–{s['q3']:.2f}); theoretical {row['theoretical']:.2f}× "
            f"→ {row['measured_over_theoretical']:.2f} of it | ≥ 0.7 of theoretical at batch 1,000, f ≤ 0.25 "
            f"| {1e3 * row['factorized']['median_s']:.2f} ms vs {1e3 * row['dense']['median_s']:.2f} ms "
            f"| {100 * row['argmax_agreement_with_reconstructed']:.1f} % same argmax as the reconstructed rank-k layers |"
        )
    return lines


def _training_lines(report: dict) -> list[str]:
    """The training comparison rows (projected step rates, time to accuracy)."""
    lines = []
    tr = report.get("training")
    if tr:
        lines.append(
            f"| training: default preset vs seed preset (projected from alternately timed steps) "
            f"| **{tr['projected_speedup']:.1f}×** | ≥ 5×, default ≤ 4 min "
            f"| {_duration(tr['default']['projected_minutes'])} ({tr['default']['steps']} steps × "
            f"{1e3 * tr['default']['step_s']['median_s']:.1f} ms) vs {_duration(tr['seed']['projected_minutes'])} "
            f"({tr['seed']['steps']} × {1e3 * tr['seed']['step_s']['median_s']:.1f} ms) | n/a |"
        )
    runs = report.get("to_accuracy") or []
    if runs:
        by_preset = {run["preset"]: run for run in runs}
        parts = []
        for run in runs:
            reached = run["reached"]
            parts.append(
                f"{run['preset']}: "
                + (
                    f"{_duration(reached['train_s'] / 60)} (step {reached['step']:,}, "
                    f"evaluated every {run['eval_every']})"
                    if reached
                    else f"not reached in {run['steps']:,} steps"
                )
            )
        ratio = ""
        if all(by_preset.get(p, {}).get("reached") for p in ("default", "seed")):
            ratio = f"**{by_preset['seed']['reached']['train_s'] / by_preset['default']['reached']['train_s']:.1f}×**"
        lines.append(
            f"| training to {runs[0]['target']:.2f} test accuracy (measured: whole test set evaluated "
            f"periodically, evaluation off the clock) | {ratio or 'n/a'} "
            f"| default ≤ 4 min, ≥ 5× faster than seed | {'; '.join(parts)} | n/a |"
        )
    return lines


def _table_lines(report: dict) -> list[str]:
    """The tables after the comparisons: recipes, scaling, sweep, runtimes."""
    lines = []
    if report.get("recipes"):
        lines += [
            "",
            f"| recipe (Adam, cosine to 0 at the horizon) | steps | first reaches {report['recipes'][0]['target']:.2f} "
            "at (epochs) | accuracy there, or at the end | training time |",
            "|---|---|---|---|---|",
        ]
        for run in report["recipes"]:
            last = run["reached"] or run["curve"][-1]
            first = f"**{last['epochs']:.2f}**" if run["reached"] else "not reached"
            lines.append(
                f"| {run['preset']} | {run['steps']:,} | {first} | {last['test_accuracy']:.4f} "
                f"| {_duration(last['train_s'] / 60)} |"
            )
    if report.get("scaling"):
        lines += ["", "| batch size | median latency (ms) | IQR (ms) | per image (ms) |", "|---|---|---|---|"]
        for row in report["scaling"]:
            lines.append(
                f"| {row['batch_size']:,} | {row['median_ms']:.1f} | {row['iqr_ms']:.1f} | {row['per_image_ms']:.3f} |"
            )
    if report.get("sweep"):
        lines += ["", "| uncached SVD grid points | seconds | per point |", "|---|---|---|"]
        for row in report["sweep"]:
            lines.append(f"| {row['points']} | {row['seconds']:.1f} | {row['seconds'] / row['points']:.2f} |")
    if report.get("runtimes"):
        lines += bench_runtimes.to_markdown(report["runtimes"])
    return lines


def to_markdown(report: dict) -> str:
    """The report as markdown tables: ratios first, absolute figures beside them."""
    lines = _speed_lines(report) + _training_lines(report)
    if lines[-2:] == COMPARISON_HEADER:  # no comparison rows in this report
        del lines[-2:]
    return "\n".join(lines + _table_lines(report))


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Which rows to run; ``quick`` uses fewer repeats and a 2,000-image inference row."""

    quick: bool = False
    rows: tuple[str, ...] = ("inference", "factorized", "training", "scaling", "sweep", "runtimes")
    # Opt-in rows (training runs towards the target accuracy: minutes to an hour on a CPU).
    optional_rows: tuple[str, ...] = ("to_accuracy", "recipes")
    to_accuracy_presets: tuple[str, ...] = ("default", "seed")
    # Whole test set evaluated every this many training images, so presets of
    # different batch sizes are timed to the same resolution in images.
    to_accuracy_eval_images: int = 3200


def run(engine, config: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Runs the selected rows against ``engine``'s checkpoint and data."""
    report: dict = {"environment": environment(), "checkpoint": engine.checkpoint_hash, "quick": config.quick}
    images = engine.data.x_test[:2000] if config.quick else engine.data.x_test
    repeats = 2 if config.quick else 3
    if "inference" in config.rows:
        log("inference: product path vs plain net.apply …")
        report["inference"] = bench_inference(engine.params, images, repeats=repeats)
    if "factorized" in config.rows:
        log("factorized vs dense dense stack …")
        fractions = (1.0, 0.25, 0.05) if config.quick else FRACTIONS
        report["factorized"] = bench_factorized(
            engine.params, engine.test_features, engine.svds, fractions, repeats=3 if config.quick else 7
        )
    if "training" in config.rows:
        log("training step rates …")
        report["training"] = bench_training(engine.data, steps=4 if config.quick else 15)
    if "to_accuracy" in config.rows:
        report["to_accuracy"] = []
        for preset in config.to_accuracy_presets:
            log(f"training {preset} to 0.66 test accuracy …")
            batch_size = configs.get_preset(preset).batch_size
            report["to_accuracy"].append(
                bench_time_to_accuracy(
                    engine.data, preset, eval_every=max(1, config.to_accuracy_eval_images // batch_size), log=log
                )
            )
    if "recipes" in config.rows:
        report["recipes"] = bench_recipes(engine.data, recipe_grid(), log=log)
    if "scaling" in config.rows:
        log("latency vs batch size …")
        report["scaling"] = bench_scaling(
            engine.params, engine.data.x_test, (1, 100, 1000) if config.quick else (1, 10, 100, 1000, 10_000)
        )
    if "sweep" in config.rows:
        log("sweep time vs grid points …")
        report["sweep"] = bench_sweep_scaling(engine, (1, 2) if config.quick else (1, 2, 4))
    if "runtimes" in config.rows:
        log(f"runtimes: {', '.join(runtimes.available())}, float and int8 …")
        report["runtimes"] = bench_runtimes.bench_runtimes(
            engine, runtime_variants(engine, config.quick), images, repeats=3 if config.quick else 7
        )
    return report


def runtime_variants(engine, quick: bool) -> dict[str, Variant]:
    """The runtimes row's variants: the baseline, SVD f = 0.05 of the hidden layers and
    (unless ``quick``) the advisor's answer within 1 point (its search is cached)."""
    variants = {
        "baseline": Variant.of(methods.REFERENCE),
        "SVD f=0.05 hidden": Variant.chain(svd.SvdConfig(0.05, "factorized", include_output=False)),
    }
    if not quick:
        variants["advisor's answer"] = Variant.from_dict(advisor.smallest_within(engine, advisor.AdvisorConfig()))
    return variants
