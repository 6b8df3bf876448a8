import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from lowrank_core import advisor, cli
from lowrank_core.errors import LowrankError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env_extra=None):
    # A dead local URL: a test must never reach the internet, even by mistake.
    env = dict(os.environ, PYTHONPATH=ROOT, LOWRANK_CIFAR10_URL="http://127.0.0.1:9/cifar.tgz", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "lowrank_core", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )


def run_in_process(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """``cli.main`` in this process: what ``python -m lowrank_core`` runs, without a JAX start
    (≈ 2 s a process). Returns (exit status, stdout, stderr); the download URL is a dead local one."""
    from lowrank_core import cli

    monkeypatch.setenv("LOWRANK_CIFAR10_URL", "http://127.0.0.1:9/cifar.tgz")
    capsys.readouterr()
    try:
        status = cli.main(list(args))
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_train_then_evaluate_json(tmp_path, synthetic_archive, capsys, monkeypatch):
    out = tmp_path / "ck"
    trained = run_cli("train", "--preset", "tiny", "--data", str(synthetic_archive), "--out", str(out))
    assert trained.returncode == 0, trained.stderr
    assert (out / "params.npz").exists() and (out / "metadata.json").exists()
    result = run_cli("evaluate", "--checkpoint", str(out), "--data", str(synthetic_archive), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["n_test"] == 24 and 0 <= payload["accuracy"] <= 1
    assert "warning: only 24 test images" in result.stderr  # measured, and said on how few
    for key in ("method", "config", "params", "macs", "bytes", "latency_ms", "batch_size"):
        assert key in payload
    assert set(payload["layer_latency_ms"]) == {
        "batch_size",
        "convolutions",
        "linear",
        "linear_1",
        "linear_2",
        "linear_3",
        "linear_4",
    }
    assert payload["batch_size"] == 24 and set(payload["latency"]) == {"1", "24"}  # the batch actually timed
    # --export writes the measured variant in the stored format: the same bytes the record counts.
    export = tmp_path / "variant.npz"
    # The train and the first evaluate ran as real processes; the rest in process (a JAX start each).
    status, stdout, stderr = run_in_process(
        capsys,
        monkeypatch,
        "evaluate",
        "--checkpoint",
        str(out),
        "--data",
        str(synthetic_archive),
        "--method",
        "svd+quantize",
        "--rank-fraction",
        "0.5",
        "--form",
        "factorized",
        "--no-latency",
        "--json",
        "--export",
        str(export),
    )
    assert status == 0, stderr
    record = json.loads(stdout)
    assert record["method"] == "svd+quantize" and export.stat().st_size == record["bytes"]
    assert [s["method"] for s in record["steps"]] == ["svd", "quantize"] and record["facts"]["ranks"]["linear"] == 48
    status, stdout, stderr = run_in_process(
        capsys,
        monkeypatch,
        "evaluate",
        "--checkpoint",
        str(out),
        "--data",
        str(synthetic_archive),
        "--method",
        "dead_units",
        "--no-latency",
        "--json",
    )
    assert status == 0, stderr
    assert json.loads(stdout)["method"] == "dead_units"


@pytest.mark.parametrize(
    "option, message",
    [
        (["--method", "svd", "--rank-fraction", "nan"], "rank fraction"),
        (["--method", "svd", "--rank-fraction", "0"], "rank fraction"),
        (["--method", "svd", "--rank-fraction", "1.5"], "rank fraction"),
        (["--method", "svd", "--energy", "0"], "energy"),
        (["--method", "svd", "--energy", "1.01"], "energy"),
        (["--method", "svd", "--layer-ranks", "linear=5000"], "rank of linear"),
        (["--method", "svd", "--layer-fractions", "linear=x"], "rank fraction"),
        (["--method", "svd", "--param-budget", "2"], "parameter budget"),
        (["--method", "nope"], "unknown method"),
        (["--method", "quantize+svd"], "must come last"),
        (["--method", "svd", "--export", "out.txt"], "--export"),
        (["--method", "svd", "--layer-ranks", "linear_9=5"], "unknown dense layer"),
        (["--method", "prune", "--sparsity", "1"], "sparsity"),
        (["--method", "prune", "--sparsity", "-0.1"], "sparsity"),
        (["--method", "remove", "--remove", "linear_4"], "cannot remove"),
        (["--method", "remove", "--remove", "conv2_d"], "cannot remove"),
        (["--method", "prune", "--schedule", "gradual", "--structured"], "gradual pruning is unstructured"),
    ],
)
def test_impossible_settings_are_one_line_exit_2(option, message, capsys, monkeypatch):
    # In process (the exit status of a real process is checked by test_bad_input_is_one_line_and_exit_2).
    status, _, stderr = run_in_process(capsys, monkeypatch, "evaluate", *option, "--json")
    assert status == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--preset", "nope"],
        ["evaluate", "--checkpoint", "/nonexistent", "--json"],
        ["evaluate", "--data", "/nonexistent.tar.gz"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr


def test_corrupt_archive_is_exit_2(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\x00" * 100)
    result = run_cli("evaluate", "--data", str(bad), "--json")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def _readme_command_lines() -> list[list[str]]:
    """Every ``python -m lowrank_core …`` line of the README (in code blocks), split like a shell would."""
    import pathlib
    import re
    import shlex

    text = (pathlib.Path(ROOT) / "README.md").read_text()
    lines = []
    # The command table: "| `COMMAND …` | …" rows stand for "python -m lowrank_core COMMAND …".
    for command in re.findall(r"^\| `([a-z][^`]*)` \|", text, re.M):
        lines.append(shlex.split(command))
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if "-m lowrank_core" in line or line.startswith("lowrank "):
                words = shlex.split(line)
                start = words.index("lowrank_core") + 1 if "lowrank_core" in words else 1
                lines.append(words[start:])
    return lines


def test_every_readme_command_parses():
    from lowrank_core import cli

    lines = _readme_command_lines()
    assert len(lines) >= 8
    parser = cli.build_parser()
    for words in lines:
        # "[--a|--b]" and "…" are the README's notation for choices: take the first choice, drop the rest.
        words = [w.strip("[]").split("|")[0] for w in words if "…" not in w and w != "..."]
        try:
            parser.parse_args(words)
        except SystemExit as exc:
            raise AssertionError(f"README command does not parse: {' '.join(words)}") from exc


class _Reached(Exception):
    """Raised instead of loading data: the options were accepted."""


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=30), st.sampled_from(["--max-drop", "--budget", "--methods", "--minimize"]))
def test_advise_options_are_accepted_or_one_line_errors(text, option):
    import contextlib
    import io

    seen = []

    def reached(args, *rest, **kwargs):
        seen.append(args)
        raise _Reached

    original = cli._make_engine
    cli._make_engine = reached
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            try:
                code = cli.main(["advise", f"{option}={text}"])
            except SystemExit as exc:  # argparse: a choice it does not know
                code = exc.code
            except _Reached:
                code = None
    finally:
        cli._make_engine = original
    if code is not None:
        assert code == 2 and len(err.getvalue().strip().splitlines()) == 1 and "Traceback" not in err.getvalue()
        return
    # Accepted: what reached the engine is a valid setting, as the advisor's contract states.
    args = seen[0]
    if option == "--max-drop":
        assert 0 <= float(args.max_drop) <= 100
    elif option == "--budget":
        assert 0 < float(args.budget) <= 1
    elif option == "--methods":
        chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
        assert "svd" in chosen and set(chosen) <= set(advisor.SEARCHABLE)
    else:
        assert args.minimize in advisor.MINIMIZE


@pytest.mark.parametrize(
    "text, expected",
    [("0.05:1.0:0.05", 20), ("0.1:0.9:0.1", 9), ("0:1:0.3", 4), ("0.1,0.5,1", 3), ("0.25", 1)],
)
def test_a_grid_is_every_value_from_start_to_stop(text, expected):
    grid = cli._parse_grid(text)
    assert len(grid) == expected and grid == sorted(grid)
    if ":" in text:
        start, stop, step = (float(v) for v in text.split(":"))
        assert grid[0] == start and stop - step < grid[-1] <= stop + 1e-9


@pytest.mark.parametrize("text", ["1:0:0.1", "0:1:0", "nan,1", "inf:1:1", "0:1:1e-9", ""])
def test_an_impossible_grid_is_one_line(text):
    with pytest.raises(LowrankError):
        cli._parse_grid(text)
