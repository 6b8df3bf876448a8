"""``python -m lowrank_core``: train and evaluate from the command line.

User errors print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from lowrank_core import paths
from lowrank_core.errors import LowrankError


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from lowrank_core import configs, data, train

    config = configs.get_preset(args.preset)
    if args.steps:
        import dataclasses
        config = dataclasses.replace(config, num_steps=args.steps)
    dataset = data.load_cifar10(args.data)
    out_dir = pathlib.Path(args.out) if args.out else paths.artifacts_dir() / "checkpoints" / config.preset
    with tqdm(total=config.num_steps, desc=f"train[{config.preset}]", unit="step") as bar:
        def on_progress(p: train.TrainProgress) -> None:
            bar.update(p.step - bar.n)
            if p.val_accuracy is not None:
                bar.set_postfix(loss=f"{p.loss:.3f}", val_acc=f"{p.val_accuracy:.3f}")

        metadata = train.train_and_save(config, dataset, out_dir, on_progress=on_progress)
    print(json.dumps({"checkpoint": str(out_dir), "test_accuracy": metadata["test_accuracy"],
                      "n_test": metadata["n_test"], "train_seconds": metadata["train_seconds"],
                      "storage_dtype": metadata["storage_dtype"]}))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from lowrank_core import checkpoint, data, evaluation

    ckpt_dir = pathlib.Path(args.checkpoint) if args.checkpoint else paths.BASELINE_DIR
    params, metadata = checkpoint.load(ckpt_dir)
    dataset = data.load_cifar10(args.data)
    acc = evaluation.accuracy(params, dataset.x_test, dataset.y_test)
    result = {"method": "baseline", "checkpoint": str(ckpt_dir), "accuracy": acc,
              "n_test": int(dataset.x_test.shape[0]), "data_sha256": dataset.sha256}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"test accuracy {acc:.4f} on {result['n_test']} images ({ckpt_dir})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lowrank_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_train = sub.add_parser("train", help="train the seed network and write a checkpoint")
    p_train.add_argument("--preset", default="default", help="seed, default, baseline or tiny")
    p_train.add_argument("--data", help="cifar-10-python.tar.gz or cifar-10-batches-py/ folder")
    p_train.add_argument("--out", help="checkpoint folder (default artifacts/checkpoints/<preset>)")
    p_train.add_argument("--steps", type=int, help="override the preset's number of steps")
    p_train.set_defaults(func=_cmd_train)

    p_eval = sub.add_parser("evaluate", help="test accuracy of a checkpoint on all test images")
    p_eval.add_argument("--checkpoint", help="checkpoint folder (default: the shipped baseline)")
    p_eval.add_argument("--data", help="cifar-10-python.tar.gz or cifar-10-batches-py/ folder")
    p_eval.add_argument("--json", action="store_true", help="print one JSON object")
    p_eval.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LowrankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
