"""Shared fixtures: synthetic CIFAR-10 in the official layout, written by the tests."""

from __future__ import annotations

import fcntl
import os
import pathlib
import pickle
import shutil
import tarfile
import tempfile

# One JAX compilation cache for this test run, set before anything imports jax: the
# many tests (and CLI subprocesses) that compile the same tiny-network programs
# compile them once. pytest-xdist's workers inherit the folder the controller made
# (it imports this file before starting them) and the controller removes it at the
# end; the browser test's app server is started without it, so its timings stay
# those of a first start.
_JAX_CACHE = None if "JAX_COMPILATION_CACHE_DIR" in os.environ else tempfile.mkdtemp(prefix="lowrank-jax-")
if _JAX_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lowrank_core import (
    data as data_lib,  # noqa: E402
    memory,  # noqa: E402
)

# Each test process keeps the memory policy the CLI and the app apply to themselves
# (lowrank_core.memory): the controller and every worker imports this file first.
memory.apply()

SHARED_ARCHIVE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-python.tar.gz"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_batch(n: int, seed: int) -> dict:
    """A batch dict as in the official files: channel-planar uint8 rows, byte-string keys."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    # Class-dependent colour so a network can learn something in a few steps.
    images = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
    images[np.arange(n), labels % 3] += (20 * labels).astype(np.uint8)[:, None, None]
    return {
        b"batch_label": b"synthetic",
        b"labels": [int(v) for v in labels],
        b"data": images.reshape(n, 3072),
        b"filenames": [b"x.png"] * n,
    }


def pickle_batch(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def write_folder(root: pathlib.Path, n_per_batch: int = 24, overrides: dict | None = None) -> pathlib.Path:
    folder = root / data_lib.BATCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: pickle_batch(make_batch(n_per_batch, i)) for i, name in enumerate(data_lib.TRAIN_BATCHES)}
    files[data_lib.TEST_BATCH] = pickle_batch(make_batch(n_per_batch, 99))
    files[data_lib.META_FILE] = pickle_batch(
        {b"label_names": [n.encode() for n in CLASS_NAMES], b"num_cases_per_batch": n_per_batch}
    )
    files.update(overrides or {})
    for name, blob in files.items():
        if blob is not None:
            (folder / name).write_bytes(blob)
    return folder


def write_archive(path: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    with tarfile.open(path, "w:gz") as archive:
        archive.add(folder, arcname=data_lib.BATCH_DIR)
    return path


@pytest.fixture(autouse=True)
def isolated_artifacts(tmp_path_factory, monkeypatch):
    """Caches go to a temporary folder; no test reads the developer's environment."""
    monkeypatch.setenv("LOWRANK_ARTIFACTS", str(tmp_path_factory.mktemp("artifacts")))
    monkeypatch.delenv(data_lib.ENV_VAR, raising=False)
    # No test may reach the internet: downloads go to a dead local port unless a test serves one.
    monkeypatch.setenv(data_lib.URL_ENV_VAR, "http://127.0.0.1:9/cifar-10-python.tar.gz")


@pytest.fixture
def synthetic_folder(tmp_path) -> pathlib.Path:
    return write_folder(tmp_path / "extracted")


@pytest.fixture
def synthetic_archive(tmp_path, synthetic_folder) -> pathlib.Path:
    return write_archive(tmp_path / data_lib.ARCHIVE_NAME, synthetic_folder)


@pytest.fixture(scope="session")
def shared_archive() -> pathlib.Path:
    """The real CIFAR-10 archive (LOWRANK_CIFAR10 as CI sets it, or ../shared)."""
    env = os.environ.get(data_lib.ENV_VAR)
    path = pathlib.Path(env) if env else SHARED_ARCHIVE
    if not path.exists():
        pytest.skip("real CIFAR-10 not available (set LOWRANK_CIFAR10)")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """(synthetic archive, checkpoint trained on it with the ``tiny`` preset), made once per run:
    under xdist the first worker trains it into the run's shared folder, the others wait and read
    it (every test copies nothing into it: the engine's caches go to each test's own folder)."""
    from lowrank_core import configs, train

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp().parent / "tiny" if worker else tmp_path_factory.mktemp("tiny")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock, pytest.MonkeyPatch.context() as patch:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / "ck" / "metadata.json").exists():
            patch.setenv("LOWRANK_ARTIFACTS", str(root / "artifacts"))  # keep its caches out of the repository
            archive = write_archive(root / data_lib.ARCHIVE_NAME, write_folder(root / "src", n_per_batch=40))
            train.train_and_save(configs.get_preset("tiny"), data_lib.load_cifar10(archive), root / "ck")
    return root / data_lib.ARCHIVE_NAME, root / "ck"


# The longest files, longest first (with --dist loadfile each runs on one worker: the real-browser
# tests ≈ 2 minutes, mostly waiting on the app server; the engine's ≈ 110 s; the pages' ≈ 70 s; then
# 20–40 s each). Scheduled first, they run beside everything else instead of forming the suite's
# tail, and the short files fill in last; pytest.ini's --no-loadscope-reorder keeps xdist from
# sorting files by their number of tests instead. A stale order costs time, never coverage.
LONGEST_FIRST = tuple(
    f"tests/test_{name}.py"
    for name in ("browser", "engine", "app", "faults", "cli", "refit", "integration", "train", "tfds")
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep order


def pytest_sessionfinish(session):
    if _JAX_CACHE:  # this process made the run's compilation cache (the controller, or a run without xdist)
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)
