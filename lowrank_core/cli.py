"""``python -m lowrank_core``: train and evaluate from the command line.

User errors print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import pathlib
import sys

from tqdm.auto import tqdm

from lowrank_core import (
    advisor,
    bench,
    checkpoint,
    configs,
    data,
    engine,
    memory,
    methods,
    model,
    paths,
    runtimes,
    share,
    train,
)
from lowrank_core.errors import ConfigError, LowrankError
from lowrank_core.fileio import atomic_write_bytes, atomic_write_json
from lowrank_core.finetune import FinetuneConfig
from lowrank_core.methods import Variant
from lowrank_core.methods.base import parse_float

SMALL_TEST_SET = 1000  # below this, figures are still measured, with a warning saying on how few images


def _cmd_train(args: argparse.Namespace) -> int:
    config = configs.get_preset(args.preset)
    if args.steps:
        config = dataclasses.replace(config, num_steps=args.steps)
    if args.eval_every:
        config = dataclasses.replace(config, eval_every=args.eval_every)
    dataset = data.load_cifar10(_data_path(args))
    out_dir = pathlib.Path(args.out) if args.out else checkpoint.trained_dir(config.preset)
    with tqdm(total=config.num_steps, desc=f"train[{config.preset}]", unit="step") as bar:

        def on_progress(p: train.TrainProgress) -> None:
            bar.update(p.step - bar.n)
            if p.val_accuracy is not None:
                bar.set_postfix(loss=f"{p.loss:.3f}", val_acc=f"{p.val_accuracy:.3f}")

        metadata = train.train_and_save(config, dataset, out_dir, on_progress=on_progress, resume=args.resume)
    print(
        json.dumps(
            {
                "checkpoint": str(out_dir),
                "test_accuracy": metadata["test_accuracy"],
                "n_test": metadata["n_test"],
                "train_seconds": metadata["train_seconds"],
                "storage_dtype": metadata["storage_dtype"],
                "resumed_from_step": metadata["resumed_from_step"],
            }
        )
    )
    return 0


def _variant(args: argparse.Namespace):
    """The variant the options describe: ``--method svd`` or a pipeline ``--method svd+quantize``."""

    names = [n.strip() for n in args.method.split("+")]
    steps = tuple((name, methods.get(name).config_from(args)) for name in names)
    finetune = None
    if args.finetune_steps:
        labels_only = getattr(args, "finetune_labels_only", False)
        finetune = (
            FinetuneConfig.labels_only(args.finetune_steps) if labels_only else FinetuneConfig(args.finetune_steps)
        )
    return methods.Variant(steps, finetune)


def _make_engine(args: argparse.Namespace, variant=None):
    ckpt_dir = pathlib.Path(args.checkpoint) if args.checkpoint else paths.BASELINE_DIR
    # A bad checkpoint or a setting the network cannot take fails before any data is fetched.
    checkpoint.load_metadata(ckpt_dir)
    if variant is not None:
        variant.check(model.spec_of(checkpoint.load_params(ckpt_dir)))
    loaded, dataset = checkpoint.load_beside(ckpt_dir, lambda: data.load_cifar10(_data_path(args)))
    if dataset.y_test.shape[0] < SMALL_TEST_SET:
        print(
            f"warning: only {dataset.y_test.shape[0]:,} test images in {dataset.source} (CIFAR-10 has 10,000); "
            "every figure below is measured on those",
            file=sys.stderr,
        )
    return engine.Engine(ckpt_dir, dataset, loaded=loaded)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    variant = _variant(args)
    _check_export_path(args.export)
    measured_in = _runtime_names(args.runtimes)
    eng = _make_engine(args, variant)
    result = eng.evaluate(
        variant,
        with_latency=not args.no_latency,
        use_cache=not args.no_cache,
        with_layer_latency=not args.no_latency,
        runtimes=measured_in,
    )
    if args.export:
        _export(eng, result, args.export)
    if args.json:
        print(json.dumps(result))
    else:
        line = f"{result['label']}: test accuracy {result['accuracy']:.4f} on {result['n_test']:,} test images"
        line += f", {result['params']:,} params, {result['macs']:,} MACs/image, {result['bytes']:,} bytes stored"
        if "latency_ms" in result:
            line += f", {result['latency_ms']:.1f} ms per batch of {result['batch_size']:,}"
        for name, entry in (result.get("runtimes") or {}).items():
            line += f"; {name}: accuracy {entry['accuracy']:.4f}"
            if "latency_ms" in entry:
                line += f", {entry['latency_ms']:.1f} ms per batch of {entry['batch_size']:,}"
        if args.export:
            line += f"; parameters written to {args.export}"
        print(line)
    return 0


EXPORT_SUFFIXES = (".npz", ".onnx")


def _check_export_path(path: str | None) -> None:
    """A one-line error before any work if ``path`` names no format (by its suffix)."""

    if path and not path.endswith(EXPORT_SUFFIXES):
        raise ConfigError(f"--export wants a path ending in .npz or .onnx, got {path!r}")


def _export(eng, result: dict, path: str) -> None:
    """Writes ``result``'s variant to ``path`` atomically, in the format its suffix names."""

    blob = eng.variant_onnx(result) if path.endswith(".onnx") else eng.variant_npz(result)
    try:
        atomic_write_bytes(path, blob)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc})") from None


def _runtime_names(text: str | None) -> tuple[str, ...]:
    """The runtimes a comma list names ("all": every one that can run here)."""

    if text is None or text == "all":
        return runtimes.available()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        runtimes.require(name)
    return names


MAX_GRID = 1000  # points in a sweep grid: more is a typo (a step of 1e-9), not a sweep


def _parse_grid(text: str) -> list[float]:
    """ "0.05:1.0:0.05" (start:stop:step, stop included) or "0.1,0.5,1": finite values, at most MAX_GRID."""
    bad = LowrankError(f"bad grid {text!r}; use start:stop:step (start ≤ stop, step > 0) or a comma list")
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if not (math.isfinite(start) and math.isfinite(stop) and step > 0 and start <= stop):
                raise bad
            count = math.floor((stop - start) / step + 1e-6) + 1  # the stop itself despite rounding
            if count > MAX_GRID:
                raise LowrankError(f"grid {text!r} has {count:,} points; at most {MAX_GRID:,}")
            grid = [round(start + i * step, 10) for i in range(count)]
        else:
            grid = [float(v) for v in text.split(",")]
    except ValueError:
        raise bad from None
    if not grid or len(grid) > MAX_GRID or not all(math.isfinite(v) for v in grid):
        raise bad
    return grid


def _cmd_sweep(args: argparse.Namespace) -> int:
    base = _variant(args)
    swept = [n for n, m in methods.REGISTRY.items() if m.sweep]
    if len(base.steps) != 1:
        raise ConfigError(f"sweep takes one method ({' or '.join(swept)}), not a pipeline")
    name, config = base.steps[0]
    if (axis := methods.get(name).sweep) is None:
        raise ConfigError(f"{name} has no setting to sweep; choose {' or '.join(swept)}")
    field, default_grid = axis
    grid = [dataclasses.replace(config, **{field: v}) for v in _parse_grid(args.grid or default_grid)]
    eng = _make_engine(args, base)
    rows = []
    for config in tqdm(grid, desc=f"sweep[{args.method}]"):
        result = eng.evaluate(Variant(((name, config),), base.finetune), with_latency=not args.no_latency)
        row = {
            "method": args.method,
            **{f"config.{k}": v for k, v in result["config"].items()},
            "accuracy": result["accuracy"],
            "n_test": result["n_test"],
            "params": result["params"],
            "macs": result["macs"],
            "bytes": result["bytes"],
            "latency_ms": result.get("latency_ms"),
            "latency_batch1_ms": result.get("latency_batch1_ms"),
        }
        rows.append(row)
    out = pathlib.Path(args.out) if args.out else paths.artifacts_dir() / "sweeps" / f"{args.method}"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out.with_suffix(".csv"), buffer.getvalue().encode())
    atomic_write_json(out.with_suffix(".json"), rows)
    print(json.dumps({"rows": len(rows), "csv": str(out.with_suffix(".csv")), "json": str(out.with_suffix(".json"))}))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    known = bench.BenchConfig.rows + bench.BenchConfig.optional_rows
    unknown = [r for r in rows if r not in known]
    if unknown or not rows:
        raise ConfigError(f"unknown bench rows {unknown or rows}; choose from {', '.join(known)}")
    report = bench.run(
        _make_engine(args),
        bench.BenchConfig(quick=args.quick, rows=rows),
        log=lambda line: print(line, file=sys.stderr),
    )
    table = bench.to_markdown(report)
    out = pathlib.Path(args.out) if args.out else paths.artifacts_dir() / "bench" / "bench"
    atomic_write_json(out.with_suffix(".json"), report)
    atomic_write_bytes(out.with_suffix(".md"), (table + "\n").encode())
    print(table)
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    grid = _parse_grid(args.grid)
    eng = _make_engine(args)
    with tqdm(desc=f"sensitivity[{args.method}]", unit="point") as bar:

        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        rows = eng.sensitivity(args.method, grid, on_progress=on_progress)
    out = pathlib.Path(args.out) if args.out else paths.artifacts_dir() / "sweeps" / f"sensitivity_{args.method}"
    atomic_write_json(out.with_suffix(".json"), rows)
    print(json.dumps(rows))
    return 0


def _cmd_advise(args: argparse.Namespace) -> int:
    methods_ = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    _check_export_path(args.export)
    config = advisor.AdvisorConfig(
        max_drop=_number(args.max_drop, "--max-drop"),
        minimize=args.minimize,
        methods=methods_,
        finetune_steps=args.finetune_steps,
        max_measurements=args.max_measurements,
        basis=args.basis,
        **({"runtime": args.runtime} if args.runtime else {}),
    )
    if config.runtimes:
        _runtime_names(",".join(config.runtimes))  # installed? one line saying how, before any work
    budget = None if args.budget is None else _number(args.budget, "--budget")
    if budget is not None and not 0 < budget <= 1:
        raise ConfigError(f"--budget must be a share in (0, 1] of the baseline, got {args.budget}")
    eng = _make_engine(args)
    with tqdm(total=100, desc="advise", unit="%", disable=args.json) as bar:

        def on_progress(stage: str, share: float) -> None:
            bar.set_postfix_str(stage)
            bar.update(int(100 * share) - bar.n)

        if budget is None:
            result = advisor.smallest_within(eng, config, on_progress)
        else:
            result = advisor.most_accurate_within(eng, budget, config, on_progress)
    if args.export:
        _export(eng, result, args.export)
    if args.json:
        print(json.dumps(result))
    else:
        search, base = result["advisor"], result["advisor"]["baseline"]
        verdict = "found" if search["found"] else "nothing measured met it; the baseline is the answer"
        print(f"{search['question']}: {verdict}")
        print(
            f"  {result['label']}: accuracy {result['accuracy']:.4f} ({100 * (result['accuracy'] - base['accuracy']):+.2f}"
            f" points) on {result['n_test']:,} test images, {result['params']:,} params "
            f"({base['params'] / result['params']:.1f}x fewer), {result['bytes']:,} bytes stored"
        )
        if search.get("with_int8"):
            q = search["with_int8"]
            print(
                f"  with int8 on top: accuracy {q['accuracy']:.4f} ({-q['drop_points']:+.2f} points), "
                f"{q['bytes']:,} bytes ({base['bytes'] / q['bytes']:.1f}x smaller)"
            )
        measured = len(search["candidates"]) + len(search.get("pipelines", []))
        print(f"  {measured} candidates measured (pipelines included); every one is cached and listed in the app")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    if not args.out.endswith((".html", ".htm")):
        raise ConfigError(f"--out wants a path ending in .html, got {args.out!r}")
    text = share.build(_make_engine(args))
    try:
        atomic_write_bytes(args.out, text.encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot write {args.out} ({exc.strerror or exc})") from None
    print(json.dumps({"report": args.out, "bytes": len(text.encode("utf-8"))}))
    return 0


def _number(text: str, option: str) -> float:
    return parse_float(text, option)


def _add_method_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        default=methods.REFERENCE,
        type=_method_name,
        help=f"one of {', '.join(methods.REGISTRY)}, or a pipeline such as svd+quantize",
    )
    for method in methods.REGISTRY.values():
        method.add_arguments(p)
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=0,
        help="fine-tune the dense stack afterwards (frozen convolutions; structure and int8 grid kept), "
        "distilling the checkpoint's logits on the training images and their mirror images",
    )
    p.add_argument(
        "--finetune-labels-only",
        action="store_true",
        help="with --finetune-steps: the label loss alone, no distillation or mirroring",
    )
    p.add_argument("--no-latency", action="store_true", help="skip latency timing")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="cifar-10-python.tar.gz, a cifar-10-batches-py/ folder, or 'tfds' (the tfds extra)")
    p.add_argument("--tfds-data-dir", help="with --data tfds: the TFDS data directory (default $TFDS_DATA_DIR)")


def _data_path(args: argparse.Namespace) -> str | None:
    if args.tfds_data_dir:
        if not data.is_tfds(args.data):
            raise ConfigError("--tfds-data-dir goes with --data tfds")
        return f"{data.TFDS}:{args.tfds_data_dir}"
    return args.data


def _method_name(text: str) -> str:
    for name in text.split("+"):
        if name.strip() not in methods.REGISTRY:
            raise argparse.ArgumentTypeError(
                f"unknown method {name.strip()!r}; choose from {', '.join(methods.REGISTRY)} (or join them with '+')"
            )
    return text


def one_line(message: str) -> str:
    """``message`` with control characters (newlines in echoed user input included) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit status 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"error: {one_line(message)} (see {self.prog} --help)\n")


def _train_parser(sub, data: argparse.ArgumentParser) -> None:
    p = sub.add_parser("train", parents=[data], help="train the seed network and write a checkpoint")
    p.add_argument("--preset", default="default", help="seed, default, baseline or tiny")
    p.add_argument("--out", help="checkpoint folder (default artifacts/checkpoints/<preset>)")
    p.add_argument("--steps", type=int, help="override the preset's number of steps")
    p.add_argument("--eval-every", type=int, help="override steps between evaluations (= resume points)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last resume point of an interrupted run with the same settings",
    )
    p.set_defaults(func=_cmd_train)


def _evaluate_parsers(sub, source: argparse.ArgumentParser) -> None:
    p = sub.add_parser("evaluate", parents=[source], help="measure a variant on all test images (cached)")
    _add_method_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-cache", action="store_true", help="recompute even if cached")
    p.add_argument(
        "--export",
        metavar="PATH",
        help="write the variant: PATH.npz (the stored format) or PATH.onnx (ONNX, uint8 images in, logits out)",
    )
    p.add_argument(
        "--runtimes", help="runtimes to measure in, e.g. jax,onnxruntime (default: every one installed here)"
    )
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("sweep", parents=[source], help="evaluate a grid of settings; writes CSV and JSON")
    _add_method_options(p)
    p.add_argument(
        "--grid", help="values of the method's swept setting, start:stop:step or a comma list (default: its own grid)"
    )
    p.add_argument("--out", help="output path without extension (default artifacts/sweeps/<method>)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("sensitivity", parents=[source], help="compress one layer at a time over a grid (accuracy only)")
    swept = [n for n, m in methods.REGISTRY.items() if m.sweep]
    p.add_argument("--method", default=swept[0], choices=swept)
    p.add_argument("--grid", default="0.05,0.1,0.25,0.5", help="values of the method's swept setting")
    p.add_argument("--out", help="output path without extension")
    p.set_defaults(func=_cmd_sensitivity)


def _advise_parser(sub, source: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "advise", parents=[source], help="the smallest variant within a drop, or the most accurate within a budget"
    )
    p.add_argument("--max-drop", default="1.0", help="accuracy points below the baseline allowed (default 1.0)")
    p.add_argument("--minimize", default="params", choices=["params", "bytes", "latency"])
    p.add_argument("--budget", help="instead: the most accurate variant costing at most this share (0..1]")
    p.add_argument(
        "--methods",
        default="svd,prune,quantize",
        help="what to search: svd (required); prune: structured pruning before the SVD; quantize: int8 on top",
    )
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune each candidate (frozen convolutions)")
    p.add_argument(
        "--basis",
        default="all",
        help="narrow the search to one SVD basis: weights, activations or calibrated (default: all of them)",
    )
    p.add_argument(
        "--runtime", help="with --minimize latency: whose measured latency (default: the product's own, jax)"
    )
    p.add_argument("--export", metavar="PATH", help="write the answer: PATH.npz or PATH.onnx")
    p.add_argument("--max-measurements", type=int, default=8, help="candidates measured at most")
    p.add_argument("--json", action="store_true", help="print the answer's measured record with the search")
    p.set_defaults(func=_cmd_advise)


def _output_parsers(sub, source: argparse.ArgumentParser) -> None:
    p = sub.add_parser("report", parents=[source], help="a self-contained HTML report of everything measured")
    p.add_argument("--out", default="report.html", help="where to write it (default report.html)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("bench", parents=[source], help="speed ratios measured in one run; markdown table + JSON")
    p.add_argument("--quick", action="store_true", help="fewer repeats, 2,000 images (a smoke run)")
    p.add_argument(
        "--rows",
        default="inference,factorized,training,scaling,sweep,runtimes",
        help="comma list of rows to run; add to_accuracy to train the default and seed "
        "presets to 0.66 test accuracy (minutes), recipes for 21 short schedules "
        "trained towards it (about an hour on a CPU)",
    )
    p.add_argument("--out", help="output path without extension (default artifacts/bench/bench)")
    p.set_defaults(func=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one subcommand each; the data options and ``--checkpoint`` come from parent parsers."""
    parser = _Parser(prog="python -m lowrank_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    data = argparse.ArgumentParser(add_help=False)
    _add_data_options(data)
    source = argparse.ArgumentParser(add_help=False, parents=[data])
    source.add_argument("--checkpoint", help="checkpoint folder (default: the shipped baseline)")
    _train_parser(sub, data)
    _evaluate_parsers(sub, source)
    _advise_parser(sub, source)
    _output_parsers(sub, source)
    return parser


def main(argv: list[str] | None = None) -> int:
    memory.apply()  # before JAX's and NumPy's threads start
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LowrankError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
