"""TensorFlow Datasets as a data source, through tfds's own mock (no download).

Runs wherever the ``tfds`` extra is installed (CI installs it); skipped otherwise.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from lowrank_core import data as data_lib
from lowrank_core.errors import DataError

tfds = pytest.importorskip("tensorflow_datasets")
tfds_testing = pytest.importorskip("tensorflow_datasets.testing")


@pytest.fixture
def mocked_cifar10(tmp_path):
    # USE_CODE: examples generated from the dataset's feature spec, nothing read or fetched.
    with tfds_testing.mock_data(num_examples=16, policy=tfds_testing.MockPolicy.USE_CODE, data_dir=str(tmp_path)):
        yield tmp_path


def test_tfds_source_gives_the_archive_layout(mocked_cifar10):
    loaded = data_lib.load_cifar10(f"tfds:{mocked_cifar10}")
    for x, y in ((loaded.x_train, loaded.y_train), (loaded.x_test, loaded.y_test)):
        assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3) and x.shape[0] == 16
        assert y.dtype == np.int32 and y.shape == (16,) and 0 <= y.min() and y.max() < 10
    assert len(loaded.class_names) == 10 and loaded.source.startswith("tfds:cifar10")
    again = data_lib.load_cifar10(f"tfds:{mocked_cifar10}")
    assert again.sha256 == loaded.sha256 and np.array_equal(again.x_test, loaded.x_test)


def test_tfds_data_dir_comes_from_the_environment(mocked_cifar10, monkeypatch):
    monkeypatch.setenv(data_lib.TFDS_ENV_VAR, str(mocked_cifar10))
    monkeypatch.setenv(data_lib.ENV_VAR, "tfds")
    assert data_lib.load_cifar10().x_test.shape == (16, 32, 32, 3)
    assert str(mocked_cifar10) in data_lib.describe_source()


def test_unprepared_tfds_dir_is_one_clear_line(tmp_path):
    with pytest.raises(DataError, match="cifar10 is not prepared in .*tfds build cifar10"):
        data_lib.load_tfds(str(tmp_path / "empty"))


def test_cli_with_unprepared_tfds_is_exit_2(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, LOWRANK_CIFAR10_URL="http://127.0.0.1:9/x.tgz", PYTHONPATH=root)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "lowrank_core",
            "evaluate",
            "--data",
            "tfds",
            "--tfds-data-dir",
            str(tmp_path / "empty"),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=300,
    )
    assert run.returncode == 2 and "not prepared" in run.stderr and len(run.stderr.strip().splitlines()) == 1
