import hashlib
import http.server
import io
import os
import pathlib
import pickle
import tarfile
import threading
import time

import numpy as np
import pytest
from conftest import make_batch, pickle_batch, write_archive, write_folder
from hypothesis import HealthCheck, given, settings, strategies as st

from lowrank_core import data as data_lib
from lowrank_core.errors import DataError, UnsafePickleError


def test_reads_folder_and_archive_identically(synthetic_folder, synthetic_archive):
    a = data_lib.read_source(synthetic_folder.parent)
    b = data_lib.read_source(synthetic_archive)
    assert a.x_train.shape == (5 * 24, 32, 32, 3) and a.x_train.dtype == np.uint8
    assert a.x_test.shape == (24, 32, 32, 3) and a.y_test.dtype == np.int32
    assert a.class_names[0] == "airplane" and len(a.class_names) == 10
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)


def test_channel_planar_rows_become_nhwc():
    batch = make_batch(3, 0)
    images, labels = data_lib.decode_batch(pickle_batch(batch), where="t")
    planar = batch[b"data"].reshape(3, 3, 32, 32)
    assert images[1, 5, 7, 0] == planar[1, 0, 5, 7]  # red plane
    assert images[1, 5, 7, 2] == planar[1, 2, 5, 7]  # blue plane
    assert labels.tolist() == batch[b"labels"]


def test_second_load_comes_from_cache(synthetic_archive, monkeypatch):
    first = data_lib.load_cifar10(synthetic_archive)
    _join_cache_writes()
    calls = []
    monkeypatch.setattr(data_lib, "read_source", lambda p: calls.append(p))
    second = data_lib.load_cifar10(synthetic_archive)
    assert calls == []
    np.testing.assert_array_equal(first.x_test, second.x_test)
    assert second.sha256 == hashlib.sha256(synthetic_archive.read_bytes()).hexdigest()


def test_loads_asked_for_at_once_decode_once_and_share_the_result(synthetic_archive, monkeypatch):
    decoding, calls = threading.Event(), []
    real = data_lib.read_source

    def slow_read(path):
        calls.append(path)
        decoding.set()
        time.sleep(0.5)  # still decoding when the second load asks
        return real(path)

    monkeypatch.setattr(data_lib, "read_source", slow_read)
    results = []
    first = threading.Thread(target=lambda: results.append(data_lib.load_cifar10(synthetic_archive)))
    first.start()
    assert decoding.wait(5)
    results.append(data_lib.load_cifar10(synthetic_archive))
    first.join()
    assert len(calls) == 1 and results[0] is results[1]
    _join_cache_writes()
    assert not data_lib._in_flight  # nothing kept once done: later loads read the decoded cache


def _join_cache_writes() -> None:
    for thread in threading.enumerate():
        if thread.name == "decoded-cache-write":
            thread.join(30)


def test_the_first_load_does_not_wait_for_its_cache_write(synthetic_archive, monkeypatch):
    release, real_write, reads = threading.Event(), data_lib._write_decoded, []
    monkeypatch.setattr(data_lib, "_write_decoded", lambda f, d: (release.wait(10), real_write(f, d)))
    first = data_lib.load_cifar10(synthetic_archive)  # returns while its cache is still unwritten
    assert not list((data_lib.paths.data_dir() / "decoded").glob("*.npz"))
    real_read = data_lib.read_source
    monkeypatch.setattr(data_lib, "read_source", lambda p: reads.append(p) or real_read(p))
    assert data_lib.load_cifar10(synthetic_archive) is first  # shared meanwhile, not decoded again
    release.set()
    _join_cache_writes()
    assert not data_lib._in_flight
    again = data_lib.load_cifar10(synthetic_archive)  # now from the written cache
    assert reads == [] and again is not first
    np.testing.assert_array_equal(again.x_train, first.x_train)
    np.testing.assert_array_equal(again.y_test, first.y_test)


def test_the_cache_write_waits_for_a_page_and_reads_back_equal(synthetic_archive, tmp_path, monkeypatch):
    decoded = data_lib.read_source(synthetic_archive)
    monkeypatch.setattr(data_lib, "WRITE_CHUNK", 1024)  # many chunks, a pause point after each
    cache_file = tmp_path / "decoded.npz"

    def write() -> None:
        with data_lib.priority.background(compute_too=False):
            data_lib._write_decoded(cache_file, decoded)

    writer = threading.Thread(target=write)
    with data_lib.priority.foreground():  # a page's run
        writer.start()
        time.sleep(0.5)
        assert writer.is_alive() and not cache_file.exists()  # paused, nothing half-written in place
    writer.join(10)
    assert not writer.is_alive()
    again = data_lib._load_decoded(cache_file)
    assert again is not None and (again.class_names, again.source, again.sha256) == (
        decoded.class_names,
        decoded.source,
        decoded.sha256,
    )
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, name), getattr(decoded, name))
        assert getattr(again, name).dtype == getattr(decoded, name).dtype


def test_replaced_source_invalidates_cache(tmp_path, synthetic_archive):
    data_lib.load_cifar10(synthetic_archive)
    folder = write_folder(tmp_path / "other", n_per_batch=8)
    time.sleep(0.01)
    write_archive(synthetic_archive, folder)
    assert data_lib.load_cifar10(synthetic_archive).x_test.shape[0] == 8


def test_corrupt_cache_is_decoded_again(synthetic_archive):
    data_lib.load_cifar10(synthetic_archive)
    _join_cache_writes()
    written = list((data_lib.paths.data_dir() / "decoded").glob("*.npz"))
    assert written
    for cached in written:
        cached.write_bytes(b"garbage")
    assert data_lib.load_cifar10(synthetic_archive).x_train.shape[0] == 120


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lowrank_pwned",))


def test_pickle_naming_other_globals_is_refused_before_running(tmp_path):
    marker = pathlib.Path("/tmp/lowrank_pwned")
    marker.unlink(missing_ok=True)
    evil = pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2)
    folder = write_folder(tmp_path, overrides={"data_batch_3": evil})
    with pytest.raises(UnsafePickleError, match="system"):
        data_lib.read_source(folder.parent)
    assert not marker.exists()


@pytest.mark.parametrize(
    "blob, message",
    [
        (pickle_batch({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}), "shape"),
        (pickle_batch({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}), "uint8"),
        (pickle_batch({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}), "0..9"),
        (pickle_batch({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1]}), "labels"),
        (pickle_batch([1, 2, 3]), "not a CIFAR-10 batch"),
        (b"\x80\x02garbage", "not a valid CIFAR-10 batch"),
    ],
)
def test_malformed_batches_are_clear_errors(tmp_path, blob, message):
    folder = write_folder(tmp_path, overrides={"test_batch": blob})
    with pytest.raises(DataError, match=message):
        data_lib.read_source(folder.parent)


def test_missing_batch_is_named(tmp_path):
    folder = write_folder(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4"):
        data_lib.read_source(folder.parent)


def test_truncated_archive_is_a_clear_error(tmp_path, synthetic_archive):
    blob = synthetic_archive.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data_lib.read_source(truncated)
    not_gzip = tmp_path / "text.tar.gz"
    not_gzip.write_text("hello")
    with pytest.raises(DataError):
        data_lib.read_source(not_gzip)


def test_an_archive_past_the_size_limit_is_refused_unread(monkeypatch, synthetic_archive):
    reads = []
    monkeypatch.setattr(data_lib, "MAX_ARCHIVE_BYTES", synthetic_archive.stat().st_size - 1)
    monkeypatch.setattr(data_lib, "_Hashing", lambda raw: reads.append(raw))
    with pytest.raises(DataError, match="refused unread"):
        data_lib.read_source(synthetic_archive)
    assert not reads


def test_the_archive_is_hashed_in_the_same_pass_that_reads_it(tmp_path, synthetic_archive):
    files, digest = data_lib._read_archive(synthetic_archive)
    assert digest == hashlib.sha256(synthetic_archive.read_bytes()).hexdigest()
    assert set(files) == set(data_lib._NEEDED)
    # Bytes after the archive's end (which the tar reader never reads) are part of the file's digest too.
    padded = tmp_path / "padded.tar.gz"
    padded.write_bytes(synthetic_archive.read_bytes() + b"\0" * 3_000_000)
    assert data_lib._read_archive(padded)[1] == hashlib.sha256(padded.read_bytes()).hexdigest()


def test_archive_member_paths_cannot_escape(tmp_path):
    folder = write_folder(tmp_path / "src")
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(folder, arcname=data_lib.BATCH_DIR)
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"bad"))
    data_lib.read_source(path)
    assert not (tmp_path.parent / "escaped.txt").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_escape_as_other_errors(blob):
    with pytest.raises(DataError):
        data_lib.decode_batch(blob, where="fuzz")


def test_source_order_explicit_then_env_then_cache(tmp_path, synthetic_archive, monkeypatch):
    other = write_folder(tmp_path / "env")
    monkeypatch.setenv(data_lib.ENV_VAR, str(other.parent))
    assert data_lib.resolve_source(synthetic_archive).origin == "argument"
    assert data_lib.resolve_source().origin == "environment"
    monkeypatch.delenv(data_lib.ENV_VAR)
    cached = data_lib.paths.data_dir() / data_lib.ARCHIVE_NAME
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(synthetic_archive.read_bytes())
    assert data_lib.resolve_source().origin == "cache"
    monkeypatch.setenv(data_lib.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(DataError, match="does not exist"):
        data_lib.resolve_source()


# ---- download, against a local HTTP server on 127.0.0.1 ----


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""
    cut_after: int | None = None

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        body = self.payload if self.cut_after is None else self.payload[: self.cut_after]
        self.wfile.write(body)
        self.wfile.flush()
        if self.cut_after is not None:
            self.connection.shutdown(2)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(synthetic_archive):
    handler = type("H", (_Handler,), {"payload": synthetic_archive.read_bytes(), "cut_after": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()


def test_download_good_file(http_server, synthetic_archive, monkeypatch):
    server, handler = http_server
    md5 = hashlib.md5(handler.payload).hexdigest()
    dest = data_lib.paths.data_dir() / data_lib.ARCHIVE_NAME
    seen = []
    data_lib.download_archive(
        dest,
        url=f"http://127.0.0.1:{server.server_port}/c.tgz",
        md5=md5,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert dest.read_bytes() == handler.payload
    assert seen[-1] == (len(handler.payload), len(handler.payload))


def test_download_wrong_checksum_leaves_nothing(http_server):
    server, _ = http_server
    dest = data_lib.paths.data_dir() / data_lib.ARCHIVE_NAME
    with pytest.raises(DataError, match="md5"):
        data_lib.download_archive(dest, url=f"http://127.0.0.1:{server.server_port}/c.tgz", md5="0" * 32)
    assert not dest.exists() and not list(dest.parent.glob("*.tmp"))


def test_download_cut_midway_leaves_nothing(http_server):
    server, handler = http_server
    handler.cut_after = len(handler.payload) // 3
    dest = data_lib.paths.data_dir() / data_lib.ARCHIVE_NAME
    with pytest.raises(DataError):
        data_lib.download_archive(
            dest, url=f"http://127.0.0.1:{server.server_port}/c.tgz", md5=hashlib.md5(handler.payload).hexdigest()
        )
    assert not dest.exists() and not list(dest.parent.glob("*.tmp"))


def test_download_is_the_last_resort_and_refuses_wrong_md5(http_server, monkeypatch):
    server, _ = http_server
    monkeypatch.setenv(data_lib.URL_ENV_VAR, f"http://127.0.0.1:{server.server_port}/c.tgz")
    # The server's archive is not the official file, so the official md5 refuses it.
    with pytest.raises(DataError, match="md5"):
        data_lib.load_cifar10()


def test_offline_with_nothing_local_says_what_to_set(monkeypatch):
    monkeypatch.setenv(data_lib.URL_ENV_VAR, "http://127.0.0.1:9/none.tgz")
    with pytest.raises(DataError, match="LOWRANK_CIFAR10"):
        data_lib.load_cifar10(progress=lambda *a: None)


def test_real_archive_loads(shared_archive):
    data = data_lib.load_cifar10(shared_archive)
    assert data.x_train.shape == (50000, 32, 32, 3) and data.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(data.y_test).tolist() == [1000] * 10
    assert np.bincount(data.y_train).tolist() == [5000] * 10


def _archive_declaring(path, member_name: str, declared: int, actual: int = 1 << 20):
    """A .tar.gz whose member header declares ``declared`` bytes but carries only ``actual`` zeros."""
    import gzip
    import tarfile as tar

    info = tar.TarInfo(f"{data_lib.BATCH_DIR}/{member_name}")
    info.size = declared
    with gzip.open(path, "wb") as out:
        out.write(info.tobuf(format=tar.GNU_FORMAT))
        out.write(b"\0" * actual)
    return path


@pytest.mark.parametrize("member", ["data_batch_1", "readme_of_3_gib.bin"])
def test_oversized_members_are_refused_before_reading(tmp_path, member):
    import time
    import tracemalloc

    archive = _archive_declaring(tmp_path / "big.tar.gz", member, 3 * 2**30)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(DataError, match="refused unread"):
        data_lib.read_source(archive)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 100 * 2**20


def test_oversized_batch_file_in_a_folder_is_refused(tmp_path):
    folder = write_folder(tmp_path / "src", n_per_batch=4)
    with open(folder / "data_batch_2", "r+b") as handle:  # sparse: 200 MiB on paper, nothing on disk
        handle.truncate(200 * 2**20)
    with pytest.raises(DataError, match="data_batch_2 declares 200 MiB"):
        data_lib.read_source(folder)


def test_a_folder_source_is_never_walked(tmp_path, monkeypatch):
    # A data path of "/" or a home folder once made the cache key stat every file below it (11 s for
    # /tmp here, minutes for "/"): only the batch files that are read may be looked at.
    deep = tmp_path / "home"
    for i in range(3):
        (deep / f"d{i}" / "x").mkdir(parents=True)
        (deep / f"d{i}" / "x" / "notes.txt").write_text("not CIFAR-10")

    def no_walk(*args, **kwargs):
        raise AssertionError("the folder was walked")

    monkeypatch.setattr(pathlib.Path, "rglob", no_walk)
    monkeypatch.setattr(pathlib.Path, "walk", no_walk, raising=False)
    monkeypatch.setattr(os, "walk", no_walk)
    with pytest.raises(DataError, match="missing"):
        data_lib.load_cifar10(deep)
    # A real folder source: keyed by its batch files, not by what else lies beside them.
    folder = write_folder(tmp_path / "src", n_per_batch=4)
    key = data_lib._cache_key(folder)
    (folder / "unrelated.txt").write_text("x")
    assert data_lib._cache_key(folder) == key
    batches = data_lib._batch_folder(folder)
    time.sleep(0.01)
    (batches / "test_batch").write_bytes((batches / "test_batch").read_bytes())
    assert data_lib._cache_key(folder) != key


def test_a_prefetch_starts_the_load_once_and_a_load_after_it_gets_the_same_data(
    synthetic_archive, tmp_path, monkeypatch
):
    reads = []
    real_read = data_lib.read_source
    monkeypatch.setattr(data_lib, "read_source", lambda path: reads.append(path) or real_read(path))
    thread = data_lib.prefetch(synthetic_archive)
    assert thread is not None and data_lib.prefetch(synthetic_archive) is None  # once per source
    thread.join(60)
    assert len(reads) == 1  # the prefetch decoded it …
    loaded = data_lib.load_cifar10(synthetic_archive, download=False)
    assert len(reads) == 1  # … and the load after shared that (or its decoded cache)
    want = real_read(synthetic_archive)
    np.testing.assert_array_equal(loaded.x_test, want.x_test)
    np.testing.assert_array_equal(loaded.y_train, want.y_train)
    missing = data_lib.prefetch(tmp_path / "nowhere" / data_lib.ARCHIVE_NAME)
    missing.join(60)  # a source that is not there: nothing raised here, the page's own load says so
    assert not missing.is_alive()
