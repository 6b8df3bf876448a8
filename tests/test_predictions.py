import numpy as np
import pytest

from lowrank_core import data as data_lib, engine, predictions
from lowrank_core.methods import Variant, result_key
from lowrank_core.methods.svd import SvdConfig


@pytest.fixture
def cache(tmp_path):
    failures = []
    return predictions.PredictionCache(tmp_path / "predictions", 6, failures.append), failures


def test_a_prediction_file_round_trips(cache):
    store, failures = cache
    store.put("k", np.arange(6, dtype=np.int32))
    np.testing.assert_array_equal(store.get("k"), np.arange(6))
    assert failures == []


@pytest.mark.parametrize(
    "contents",
    [b"not an npy file", b"\x93NUMPY" + b"\0" * 10_000, None],
    ids=["corrupt", "oversized", "mis-shaped"],
)
def test_a_bad_prediction_file_reads_as_absent(cache, contents):
    store, _ = cache
    if contents is None:
        store.put("k", np.arange(7, dtype=np.int32))  # another test set's
    else:
        store.folder.mkdir(parents=True)
        (store.folder / "k.npy").write_bytes(contents)
    assert store.get("k") is None


def test_an_unwritable_cache_reports_and_keeps_going(tmp_path):
    (tmp_path / "file").write_text("")
    failures = []
    predictions.PredictionCache(tmp_path / "file" / "predictions", 6, failures.append).put("k", np.zeros(6, np.int32))
    assert len(failures) == 1 and isinstance(failures[0], OSError)


def test_predictions_of_a_record_are_rebuilt_when_their_file_is_gone(tiny_checkpoint, tmp_path):
    archive, ck = tiny_checkpoint
    eng = engine.Engine(ck, data_lib.load_cifar10(archive), cache_root=tmp_path / "cache")
    record = eng.evaluate("svd", SvdConfig(0.5), with_latency=False)
    kept = predictions.of_record(eng, record)
    assert np.mean(kept == eng.data.y_test) == record["accuracy"]
    (eng.prediction_cache.folder / f"{result_key(eng.checkpoint_hash, Variant.from_dict(record))}.npy").unlink()
    np.testing.assert_array_equal(predictions.of_record(eng, record), kept)
