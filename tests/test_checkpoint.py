import io
import json
import struct
import zlib

import jax
import numpy as np
import pytest

from lowrank_core import checkpoint, model
from lowrank_core.errors import CheckpointError


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(np.asarray, model.init_params(jax.random.PRNGKey(3), model.TINY_SPEC))


def test_roundtrip_float32_and_float16(tmp_path, params):
    checkpoint.save(tmp_path / "a", params, {"preset": "x"})
    loaded, meta = checkpoint.load(tmp_path / "a")
    assert meta["preset"] == "x" and meta["storage_dtype"] == "float32" and "jax" in meta["library_versions"]
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    checkpoint.save(tmp_path / "b", params, {}, dtype=np.float16)
    half, _ = checkpoint.load(tmp_path / "b")
    assert half["linear"]["w"].dtype == np.float32
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), half, params)
    with np.load(tmp_path / "b" / "params.npz", allow_pickle=False) as npz:
        assert "linear_2/w" in npz.files and npz["linear_2/w"].dtype == np.float16


def test_a_checkpoint_is_read_beside_other_work_and_that_works_error_comes_first(tmp_path, params):
    import threading

    checkpoint.save(tmp_path / "a", params, {"preset": "x"}, dtype=np.float16)
    both = threading.Barrier(2, timeout=10)  # each waits for the other: they run at once
    real_load = checkpoint.load_with_digest

    def load_meeting_work(directory):
        both.wait()
        return real_load(directory)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "load_with_digest", load_meeting_work)
        loaded, result = checkpoint.load_beside(tmp_path / "a", lambda: both.wait() or "data")
    assert result == "data" and loaded.metadata["preset"] == "x"
    jax.tree.map(np.testing.assert_array_equal, loaded.params, checkpoint.load_stored(tmp_path / "a").params)
    assert loaded.params["linear"]["w"].dtype == np.float32  # float16 values, as variants are built from

    def missing_data():
        raise ValueError("no data")

    with pytest.raises(ValueError, match="no data"):  # both fail: the data's error, as when it ran first
        checkpoint.load_beside(tmp_path / "absent", missing_data)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load_beside(tmp_path / "absent", lambda: "data")


def test_overwrite_replaces_whole_folder(tmp_path, params):
    checkpoint.save(tmp_path / "c", params, {"preset": "old"})
    checkpoint.save(tmp_path / "c", params, {"preset": "new"})
    assert checkpoint.load_metadata(tmp_path / "c")["preset"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_bad_checkpoints_are_clear_errors(tmp_path, params):
    good = tmp_path / "good"
    checkpoint.save(good, params, {})
    blob = (good / "params.npz").read_bytes()

    def variant(name, params_bytes=None, metadata_text=None):
        folder = tmp_path / name
        folder.mkdir()
        if params_bytes is not None:
            (folder / "params.npz").write_bytes(params_bytes)
        (folder / "metadata.json").write_text(metadata_text if metadata_text is not None else "{}")
        return folder

    with pytest.raises(CheckpointError, match="missing"):
        checkpoint.load(variant("missing"))
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        checkpoint.load(variant("truncated", blob[: len(blob) // 2]))
    nan = dict(params, linear_3=dict(params["linear_3"], b=np.full(params["linear_3"]["b"].shape, np.nan, np.float32)))
    with pytest.raises(CheckpointError, match="NaN"):
        checkpoint.load(variant("nan", checkpoint.params_to_npz_bytes(nan)))
    other = dict(params, linear=dict(params["linear"], w=np.zeros((6144, 3000), np.float32)))
    with pytest.raises(CheckpointError, match="linear/w"):
        checkpoint.load(variant("shape", checkpoint.params_to_npz_bytes(other)))
    with pytest.raises(CheckpointError, match="metadata.json"):
        checkpoint.load(variant("meta", blob, metadata_text="{not json"))
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nowhere")


def test_pickled_object_arrays_are_refused(tmp_path):
    folder = tmp_path / "obj"
    folder.mkdir()
    np.savez(folder / "params.npz", **{"linear/w": np.array([object()], dtype=object)})
    (folder / "metadata.json").write_text(json.dumps({}))
    with pytest.raises(CheckpointError):
        checkpoint.load(folder)


def test_param_shapes_reads_headers_only_and_refuses_what_load_refuses(tmp_path, params):
    checkpoint.save(tmp_path / "h", params, {}, dtype=np.float16)
    shapes = checkpoint.param_shapes(tmp_path / "h")
    loaded = checkpoint.load_params(tmp_path / "h")
    assert jax.tree.map(np.shape, shapes) == jax.tree.map(np.shape, loaded)
    assert shapes["linear"]["w"].dtype == np.float16 and shapes["linear"]["w"].strides == (0, 0)  # nothing read
    for name, blob in (("truncated", (tmp_path / "h" / "params.npz").read_bytes()[:100]), ("garbage", b"x" * 64)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "params.npz").write_bytes(blob)
        with pytest.raises(CheckpointError, match="unreadable or truncated"):
            checkpoint.param_shapes(tmp_path / name)
    other = dict(params, linear=dict(params["linear"], w=params["linear"]["w"][:, :3]))  # not one network
    (tmp_path / "odd").mkdir()
    np.savez(tmp_path / "odd" / "params.npz", **checkpoint.flatten_params(other))
    with pytest.raises(CheckpointError, match="shape"):
        checkpoint.param_shapes(tmp_path / "odd")


def _bomb_npz(path, key="linear/w", declared_gib: float = 2.0) -> None:
    """A small .npz whose one deflate member expands to ``declared_gib`` GiB of zeros, laid out as
    the zip format says by hand: a 16 MiB run of zeros is deflated once and its bytes repeated
    (a full flush makes each run a block of its own), so writing it takes a moment, not the
    seconds deflating gigabytes takes."""
    n = int(declared_gib * 2**30) // 4
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32)) | {"shape": (n,)}
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, header)
    head, zeros = head.getvalue(), bytes(2**24)
    runs = n * 4 // len(zeros)
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    first = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    run = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH) == run  # the same bytes each time
    last = deflate.flush()
    crc = zlib.crc32(head)
    for _ in range(runs):
        crc = zlib.crc32(zeros, crc)
    size, packed, name = len(head) + runs * len(zeros), len(first) + runs * len(run) + len(last), f"{key}.npy"
    fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0x21, crc, packed, size)  # deflated, 1980-01-01
    with open(path, "wb") as out:
        out.write(b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name.encode())
        out.write(first)
        for _ in range(runs):
            out.write(run)
        out.write(last)
        directory = out.tell()
        out.write(b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, 0))
        out.write(name.encode())
        end = out.tell()
        out.write(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, end - directory, directory, 0))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bomb")
    _bomb_npz(folder / "params.npz")
    (folder / "metadata.json").write_text(json.dumps({"storage_dtype": "float32"}))
    return folder


def test_a_params_member_expanding_to_gigabytes_is_refused_before_it_is_inflated(bomb):
    import resource
    import time

    assert (bomb / "params.npz").stat().st_size < 20 * 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="not inflated"):
        checkpoint.load_params(bomb)
    with pytest.raises(CheckpointError):
        checkpoint.param_shapes(bomb)
    assert time.perf_counter() - started < 3.0
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 * 1024  # far from the 3 GiB the member declares


def test_a_member_larger_than_its_header_says_is_refused(tmp_path, params):
    import zipfile

    checkpoint.save(tmp_path / "a", params, {})
    path = tmp_path / "a" / "params.npz"
    with zipfile.ZipFile(path) as archive:
        members = {i.filename: archive.read(i) for i in archive.infolist()}
    members["linear/w.npy"] += bytes(4096)  # data past what the header declares
    with zipfile.ZipFile(path, "w") as archive:
        for name, blob in members.items():
            archive.writestr(name, blob)
    with pytest.raises(CheckpointError, match="declares"):
        checkpoint.load_params(tmp_path / "a")


def test_oversized_or_special_metadata_is_refused_unread(tmp_path, params):
    import os

    checkpoint.save(tmp_path / "a", params, {})
    meta = tmp_path / "a" / "metadata.json"
    meta.write_bytes(b'{"x": "' + b"a" * (checkpoint.MAX_METADATA_BYTES + 10) + b'"}')
    with pytest.raises(CheckpointError, match="not read"):
        checkpoint.load_metadata(tmp_path / "a")
    meta.unlink()
    os.mkfifo(meta)
    with pytest.raises(CheckpointError, match="not a regular file"):
        checkpoint.load_metadata(tmp_path / "a")
    meta.unlink()
    meta.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError):
        checkpoint.load_metadata(tmp_path / "a")


def test_uploads_are_checked_then_kept_by_content(tmp_path, params, bomb):
    checkpoint.save(tmp_path / "a", params, {"preset": "x"})
    blob = (tmp_path / "a" / "params.npz").read_bytes()
    folder = checkpoint.store_upload(blob)
    assert checkpoint.load_metadata(folder)["storage_dtype"] == "float32"  # written for an upload without one
    assert checkpoint.store_upload(blob, b'{"preset": "again"}') == folder  # same content, same folder
    assert checkpoint.known_checkpoints()[checkpoint.upload_label(folder.name)] == folder
    for hostile in ((bomb / "params.npz").read_bytes(), b"PK\x03\x04 not really", b"\x00" * 100):
        with pytest.raises(CheckpointError):
            checkpoint.store_upload(hostile)
    with pytest.raises(CheckpointError):
        checkpoint.store_upload(blob[: len(blob) // 2] + bytes(10), None)
    with pytest.raises(CheckpointError, match="metadata"):
        checkpoint.store_upload(blob + b"x", b"[1, 2")  # other bytes, bad metadata: refused, nothing kept
    assert sorted(p.name for p in checkpoint.uploads_dir().iterdir()) == [folder.name]  # no staging left
