"""Faults: kill -9 mid-training and mid-write, two processes on one variant,
an unwritable artifacts folder. Real subprocesses, real files."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

from lowrank_core import checkpoint, configs, data as data_lib, engine, methods, train
from lowrank_core.fileio import atomic_write_json
from lowrank_core.methods.svd import SvdConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lowrank_core", *args],
        cwd=REPO,
        env=env or dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_during_training_keeps_checkpoint_and_resumes(tiny_checkpoint, tmp_path):
    archive, previous = tiny_checkpoint
    out = tmp_path / "run"
    out.parent.mkdir(exist_ok=True)
    import shutil

    shutil.copytree(previous, out)  # a good checkpoint already there
    before = (out / checkpoint.PARAMS_FILE).read_bytes()
    # A resume point holds the whole training state (≈ 340 MB): a few, not hundreds.
    proc = _cli(
        "train", "--preset", "tiny", "--steps", "60", "--eval-every", "20", "--data", str(archive), "--out", str(out)
    )
    resume_file = train.resume_path(out)
    deadline = time.time() + 240
    while not resume_file.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert resume_file.exists(), proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / checkpoint.PARAMS_FILE).read_bytes() == before  # the previous checkpoint is intact
    checkpoint.load(out)
    done = _cli(
        "train",
        "--preset",
        "tiny",
        "--steps",
        "60",
        "--eval-every",
        "20",
        "--data",
        str(archive),
        "--out",
        str(out),
        "--resume",
    )
    stdout, stderr = done.communicate(timeout=600)
    assert done.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["resumed_from_step"] >= 20
    assert not resume_file.exists()
    params, metadata = checkpoint.load(out)
    assert metadata["resumed_from_step"] == summary["resumed_from_step"]


def test_resume_point_of_other_settings_is_ignored(tmp_path):
    config = configs.get_preset("tiny")
    state = train.init_state(config, train.make_optimizer(config))
    path = tmp_path / "x.resume.npz"
    train.save_resume_point(path, 3, state, config)
    step, loaded = train.load_resume_point(path, config)
    assert step == 3
    np.testing.assert_array_equal(loaded.params["linear"]["w"], state.params["linear"]["w"])
    import dataclasses

    assert train.load_resume_point(path, dataclasses.replace(config, learning_rate=0.5)) is None
    path.write_bytes(path.read_bytes()[:1000])  # truncated by a crash
    assert train.load_resume_point(path, config) is None


WRITER = """
import sys, json
from lowrank_core.fileio import atomic_write_json
payload = {"blob": "x" * 20_000_000}
while True:
    atomic_write_json(sys.argv[1], payload)
"""


def test_kill_during_cache_write_leaves_nothing_trusted(tmp_path):
    target = tmp_path / "results" / "entry.json"
    target.parent.mkdir()
    atomic_write_json(target, {"blob": "x" * 20_000_000})  # a complete entry to be overwritten
    for delay in (0.3, 0.7, 1.1):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=REPO)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Either the old complete file or a new complete file, never a partial one.
        assert len(json.loads(target.read_text())["blob"]) == 20_000_000
    # Leftover temp files never carry the entry's name, and the engine reads only *.json.
    assert all(p.name.startswith(".entry.json.") for p in target.parent.iterdir() if p != target)


def test_engine_recomputes_an_entry_left_half_written(tiny_checkpoint):
    archive, ck = tiny_checkpoint
    eng = engine.Engine(ck, data_lib.load_cifar10(archive))
    config = SvdConfig(0.2, "factorized")
    good = eng.evaluate("svd", config, with_latency=False)
    path = eng.store.path(methods.result_key(eng.checkpoint_hash, methods.Variant.of("svd", config)))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert eng.cached_result("svd", config) is None
    assert eng.evaluate("svd", config, with_latency=False)["accuracy"] == good["accuracy"]
    assert eng.cached_result("svd", config) is not None


def test_two_processes_on_one_variant_make_one_good_entry(tiny_checkpoint, tmp_path):
    archive, ck = tiny_checkpoint
    env = dict(os.environ, LOWRANK_ARTIFACTS=str(tmp_path / "shared_artifacts"))
    args = (
        "evaluate",
        "--checkpoint",
        str(ck),
        "--data",
        str(archive),
        "--method",
        "svd",
        "--rank-fraction",
        "0.3",
        "--form",
        "factorized",
        "--no-latency",
        "--json",
    )
    procs = [_cli(*args, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    results = [json.loads(out.strip()) for out, _ in outputs]
    assert results[0]["accuracy"] == results[1]["accuracy"]
    entries = list((tmp_path / "shared_artifacts").rglob("results/*.json"))
    assert len(entries) == 1
    stored = json.loads(entries[0].read_text())
    assert stored["payload"]["accuracy"] == results[0]["accuracy"]
    assert not [p for p in entries[0].parent.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_artifacts_keep_working_from_memory(tiny_checkpoint, tmp_path, monkeypatch):
    archive, ck = tiny_checkpoint
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the artifacts folder should be")
    eng = engine.Engine(ck, data_lib.load_cifar10(archive), cache_root=blocker / "cache")
    result = eng.evaluate("quantize", with_latency=False)
    assert result["n_test"] == eng.data.y_test.shape[0]
    assert eng.write_problem and "cannot write the cache" in eng.write_problem
    assert eng.cached_result("quantize") == result
    assert result in eng.cached_results()


def test_concurrent_sessions_compute_a_variant_once(tiny_checkpoint):
    import threading

    archive, ck = tiny_checkpoint
    eng = engine.Engine(ck, data_lib.load_cifar10(archive))
    calls = []
    real_build = eng.build

    def counting_build(*args, **kwargs):
        calls.append(args[0])
        time.sleep(0.5)  # long enough for the other session to arrive meanwhile
        return real_build(*args, **kwargs)

    eng.build = counting_build
    config = SvdConfig(0.15, "factorized")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(eng.evaluate("svd", config, with_latency=False)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3 and all(r == results[0] for r in results)


FULL_DISK_RUN = r"""
import json, resource, signal, sys
from lowrank_core import data as data_lib, engine
archive, ck, cache = sys.argv[1:4]
# Every write past 64 bytes now fails in the kernel, as on a full disk.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
eng = engine.Engine(ck, data_lib.load_cifar10(archive), cache_root=__import__("pathlib").Path(cache))
result = eng.evaluate("quantize", with_latency=False)
print(json.dumps({"accuracy": result["accuracy"], "problem": eng.write_problem,
                  "again": eng.evaluate("quantize", with_latency=False)["accuracy"]}))
"""


def test_full_disk_keeps_results_in_memory_and_old_entries_intact(tiny_checkpoint, tmp_path):
    archive, ck = tiny_checkpoint
    cache = tmp_path / "cache"
    good = engine.Engine(ck, data_lib.load_cifar10(archive), cache_root=cache)
    good.evaluate("baseline", with_latency=False)
    entries = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    assert entries
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run(
        [sys.executable, "-c", FULL_DISK_RUN, str(archive), str(ck), str(cache)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert "cannot write the cache" in out["problem"] and out["again"] == out["accuracy"]
    # What was there is untouched, nothing half-written was left beside it.
    assert {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()} == entries
    assert engine.Engine(ck, data_lib.load_cifar10(archive), cache_root=cache).cached_result("quantize") is None


SAVE_KILLED_AT = r"""
import json, os, signal, sys
import numpy as np
from lowrank_core import checkpoint

def save_killed_at(directory, kill_at):
    calls = []
    real_replace, real_rmtree = os.replace, checkpoint.shutil.rmtree

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # as a power cut would: no cleanup runs
        return real_replace(src, dst)

    def rmtree(path, *args, **kwargs):
        if kill_at == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rmtree(path, *args, **kwargs)

    os.replace, checkpoint.shutil.rmtree = replace, rmtree
    params = {"linear": {"w": np.full((3, 2), 2.0, np.float32), "b": np.zeros(2, np.float32)}}
    checkpoint.save(directory, params, {"preset": "new"})

# One import, one forked child per kill point (nothing here has started a thread to fork beside).
statuses = {}
for directory, kill_at in zip(sys.argv[1::2], map(int, sys.argv[2::2])):
    pid = os.fork()
    if pid == 0:
        save_killed_at(directory, kill_at)
        os._exit(0)
    statuses[directory] = os.waitpid(pid, 0)[1]
print(json.dumps(statuses))
"""


def test_checkpoint_save_killed_at_every_point_leaves_one_loadable(tmp_path):
    # os.replace calls in a save over an existing folder: params file, metadata file
    # (into staging), old folder aside, new folder in place; 0 = after both, before cleanup.
    points = (1, 2, 3, 4, 0)
    old = {"linear": {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}}
    for kill_at in points:
        checkpoint.save(tmp_path / f"ck{kill_at}", old, {"preset": "old"})
    arguments = [a for k in points for a in (str(tmp_path / f"ck{k}"), str(k))]
    run = subprocess.run(
        [sys.executable, "-c", SAVE_KILLED_AT, *arguments], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    statuses = json.loads(run.stdout.strip().splitlines()[-1])
    for kill_at in points:
        directory = tmp_path / f"ck{kill_at}"
        status = statuses[str(directory)]
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        params = checkpoint.load_params(directory, check=False)
        metadata = checkpoint.load_metadata(directory)
        assert metadata["preset"] == ("new" if kill_at == 0 else "old")
        assert np.all(params["linear"]["w"] == (2.0 if kill_at == 0 else 1.0))
        # A later save cleans up whatever the crash left beside the folder.
        checkpoint.save(directory, old, {"preset": "again"})
        assert not list(tmp_path.glob(f".ck{kill_at}.old.*"))
