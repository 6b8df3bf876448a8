import json

from lowrank_core import store


def test_a_record_round_trips_and_lists(tmp_path):
    results = store.ResultStore(tmp_path / "results")
    results.put("k", {"accuracy": 0.5})
    assert results.get("k") == {"accuracy": 0.5} and results.all() == {"k": {"accuracy": 0.5}}


def test_an_edited_truncated_or_oversized_record_reads_as_missing(tmp_path, monkeypatch):
    results = store.ResultStore(tmp_path / "results")
    for key in ("edited", "truncated", "oversized"):
        results.put(key, {"accuracy": 0.5})
    edited = json.loads(results.path("edited").read_text())
    edited["payload"]["accuracy"] = 0.9
    results.path("edited").write_text(json.dumps(edited))
    results.path("truncated").write_bytes(results.path("truncated").read_bytes()[:20])
    monkeypatch.setattr(store, "MAX_RECORD_BYTES", results.path("oversized").stat().st_size - 1)
    assert [results.get(k) for k in ("edited", "truncated", "oversized")] == [None, None, None]
    assert results.all() == {}


def test_an_unwritable_folder_keeps_records_in_memory_and_says_so(tmp_path):
    (tmp_path / "file").write_text("")
    results = store.ResultStore(tmp_path / "file" / "results")
    results.put("k", {"accuracy": 0.5})
    assert results.get("k") == {"accuracy": 0.5} and "cannot write the cache" in results.write_problem
    assert results.clear() == 1 and results.get("k") is None
