"""CIFAR-10 in the official "python version" layout, loaded safely.

Sources, in the order they are tried (:func:`resolve_source`):

1. an explicit path (CLI ``--data``, the app's data setting);
2. the environment variable ``LOWRANK_CIFAR10`` (archive or folder);
3. the project's data cache, ``artifacts/data/``;
4. a download of the official archive, checked against its md5.

The batches are pickles, and users point the app at files they downloaded, so
they are read by an unpickler that resolves only the globals the official
batches name (numpy's array reconstruction, ``ndarray`` and ``dtype``), plus
the latin-1 bytes encoder Python 3 writes into protocol-2 pickles; any other
global is refused before it is looked up, so no code can run.

Decoded arrays are cached as one ``.npz`` keyed by the source's path, size and
modification time, so a second load reads ~180 MB of arrays and nothing else.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import pickle
import tarfile
import threading
import urllib.error
import urllib.request
import zipfile
import zlib
from typing import Callable, Mapping

import numpy as np
from tqdm.auto import tqdm

from lowrank_core import paths, priority
from lowrank_core.errors import DataError, DataMissing, UnsafePickleError
from lowrank_core.fileio import atomic_open

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_BYTES = 170_498_071  # the official archive's size, for saying what a download will fetch
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
ENV_VAR = "LOWRANK_CIFAR10"
URL_ENV_VAR = "LOWRANK_CIFAR10_URL"  # for tests and mirrors; md5 still checked
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
_PIXELS = 32 * 32 * 3
# Bump when the decoded layout changes so stale caches are not trusted.
_DECODE_VERSION = 1

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total or 0)


@dataclasses.dataclass(frozen=True, eq=False)
class Cifar10:
    """CIFAR-10 as arrays: images uint8 N×32×32×3 (NHWC), labels int32 in 0..9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str  # where it was read from, for the model card
    sha256: str  # of the archive file, or of the folder's batch files in order


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A located copy of CIFAR-10: a ``.tar.gz`` or a ``cifar-10-batches-py`` folder."""

    path: pathlib.Path
    origin: str  # "argument", "environment", "cache" or "download"


# --------------------------------------------------------------------------
# Safe unpickling


def _numpy_reconstruct():
    # numpy moved this function between releases (numpy.core -> numpy._core);
    # asking an array for its reducer finds it wherever this numpy keeps it.
    return np.empty(0).__reduce__()[0]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str,
    # "latin1"); admit exactly that use and nothing else of the codecs module.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("refused to unpickle: _codecs.encode used for something other than bytes")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals CIFAR-10 batches contain."""

    def __init__(self, file, *, where: str):
        super().__init__(file, encoding="bytes")
        self._where = where

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to unpickle {self._where}: it names {module}.{name}, which a "
                "CIFAR-10 batch never contains (only numpy arrays, lists and dicts)"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refused to unpickle {self._where}: it uses persistent ids")


def safe_unpickle(data: bytes, *, where: str) -> object:
    """Unpickles ``data`` admitting only numpy arrays, dtypes and plain containers."""
    try:
        return _CifarUnpickler(io.BytesIO(data), where=where).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # a malformed pickle can raise almost anything
        raise DataError(f"{where} is not a valid CIFAR-10 batch ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------
# Decoding batches


def _get(batch: Mapping, key: str, where: str):
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"{where} has no '{key}' entry; is it a CIFAR-10 batch?")


def decode_batch(raw: bytes, *, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decodes one pickled data batch into (uint8 N×32×32×3 images, int32 labels)."""
    planar, labels = _planar_batch(raw, where=where)
    return np.ascontiguousarray(_nhwc(planar)), labels


def _nhwc(planar: np.ndarray) -> np.ndarray:
    # Rows are channel-planar (1024 R, 1024 G, 1024 B); the network wants NHWC.
    return planar.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _planar_batch(raw: bytes, *, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled data batch validated: (its uint8 N×3072 channel-planar rows, int32 labels)."""
    batch = safe_unpickle(raw, where=where)
    if not isinstance(batch, dict):
        raise DataError(f"{where} holds a {type(batch).__name__}, not a CIFAR-10 batch dict")
    data = _get(batch, "data", where)
    labels = _get(batch, "labels", where)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' must be a uint8 array, got {kind}")
    if data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DataError(f"{where}: 'data' must have shape (N, {_PIXELS}), got {data.shape}")
    try:
        labels = np.asarray(labels)
    except Exception:
        raise DataError(f"{where}: 'labels' is not a list of integers") from None
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{where}: 'labels' must be {data.shape[0]} integers, got shape {labels.shape} of {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{where}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int32)


def decode_meta(raw: bytes, *, where: str) -> tuple[str, ...]:
    """Decodes ``batches.meta`` into the ten class names."""
    meta = safe_unpickle(raw, where=where)
    if not isinstance(meta, dict):
        raise DataError(f"{where} holds a {type(meta).__name__}, not the CIFAR-10 meta dict")
    names = _get(meta, "label_names", where)
    if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
        raise DataError(f"{where}: 'label_names' must list {NUM_CLASSES} class names")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)


# --------------------------------------------------------------------------
# Reading an archive or a folder


_NEEDED = TRAIN_BATCHES + (TEST_BATCH, META_FILE)
# A genuine batch pickle is ≈ 31 MB (10,000 images); anything much larger is
# refused before it is read, so a small archive declaring gigabytes of zeros
# cannot exhaust memory.
MAX_MEMBER_BYTES = 64 * 2**20


def _too_large(where: str, size: int) -> DataError:
    return DataError(
        f"{where} declares {size / 2**20:,.0f} MiB; a CIFAR-10 batch is about 31 MiB, so it is "
        f"refused unread (limit {MAX_MEMBER_BYTES // 2**20} MiB): use a genuine CIFAR-10 copy"
    )


def _read_limited(handle, where: str) -> bytes:
    """Reads at most MAX_MEMBER_BYTES from ``handle``; a stream running past it is refused."""
    blob = handle.read(MAX_MEMBER_BYTES + 1)
    if len(blob) > MAX_MEMBER_BYTES:
        raise _too_large(where, len(blob))
    return blob


MAX_ARCHIVE_BYTES = 1 << 30  # the official archive is 163 MiB: anything past this is refused unread


class _Hashing(io.RawIOBase):
    """A file read front to back once, hashed as it is read (its digest without a second read)."""

    def __init__(self, raw):
        self.raw, self.digest = raw, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
        return n

    def finish(self) -> str:
        """The digest of the whole file (what the reader left unread is read now)."""
        while chunk := self.raw.read(1 << 20):
            self.digest.update(chunk)
        return self.digest.hexdigest()


def _read_archive(path: pathlib.Path) -> tuple[dict[str, bytes], str]:
    """The needed members of the archive, read into memory, and the archive's sha256 (one pass)."""
    size = path.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise DataError(
            f"{path} is {size / 2**20:,.0f} MiB; the CIFAR-10 archive is about 163 MiB, so it is refused "
            f"unread (limit {MAX_ARCHIVE_BYTES // 2**20} MiB): use a genuine CIFAR-10 copy"
        )
    files: dict[str, bytes] = {}
    try:
        with open(path, "rb") as raw:
            hashing = _Hashing(raw)
            with tarfile.open(fileobj=io.BufferedReader(hashing, 1 << 20), mode="r|*", bufsize=1 << 20) as archive:
                # Members are read into memory, never extracted, so names like
                # "../../x" in a hostile archive cannot write anywhere.
                for member in archive:
                    parts = pathlib.PurePosixPath(member.name).parts
                    if member.isfile() and len(parts) >= 2 and parts[-2] == BATCH_DIR and parts[-1] in _NEEDED:
                        if member.size > MAX_MEMBER_BYTES:
                            raise _too_large(f"{path}:{member.name}", member.size)
                        handle = archive.extractfile(member)
                        files[parts[-1]] = _read_limited(handle, f"{path}:{member.name}") if handle else b""
                    elif member.size > MAX_MEMBER_BYTES:
                        # Skipping it would still decompress all of it: stop here.
                        raise _too_large(f"{path}:{member.name}", member.size)
            digest = hashing.finish()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"{path} is not a readable CIFAR-10 archive (truncated or corrupt: {exc}); "
            "download it again or point LOWRANK_CIFAR10 at a good copy"
        ) from None
    return files, digest


def _batch_folder(path: pathlib.Path) -> pathlib.Path:
    """Where a folder source keeps its batch files: ``PATH/cifar-10-batches-py/`` or PATH itself."""
    return path / BATCH_DIR if (path / BATCH_DIR).is_dir() else path


def _read_folder(path: pathlib.Path) -> dict[str, bytes]:
    folder = _batch_folder(path)
    files = {}
    for name in _NEEDED:
        if (folder / name).is_file():
            size = (folder / name).stat().st_size
            if size > MAX_MEMBER_BYTES:
                raise _too_large(str(folder / name), size)
            with open(folder / name, "rb") as handle:
                files[name] = _read_limited(handle, str(folder / name))
    return files


def read_source(path: pathlib.Path) -> Cifar10:
    """Reads and validates CIFAR-10 from an archive or an extracted folder."""
    path = pathlib.Path(path)
    digest = None
    if path.is_dir():
        files = _read_folder(path)
    elif path.is_file():
        files, digest = _read_archive(path)
    else:
        raise DataError(f"{path} does not exist; expected {ARCHIVE_NAME} or a {BATCH_DIR}/ folder")
    missing = [name for name in _NEEDED if name not in files]
    if missing:
        raise DataError(f"{path} is missing {', '.join(missing)} of the {BATCH_DIR}/ layout")
    if digest is None:
        digest_builder = hashlib.sha256()
        for name in _NEEDED:
            digest_builder.update(files[name])
        digest = digest_builder.hexdigest()
    class_names = decode_meta(files[META_FILE], where=f"{path}:{META_FILE}")
    x_test, y_test = decode_batch(files.pop(TEST_BATCH), where=f"{path}:{TEST_BATCH}")
    x_train, y_train = _train_images(files, where=str(path))
    return Cifar10(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=class_names,
        source=str(path.resolve()),
        sha256=digest,
    )


def _train_images(files: dict[str, bytes], where: str) -> tuple[np.ndarray, np.ndarray]:
    """The training batches decoded straight into one array: each batch's bytes are dropped once
    decoded and no second copy is concatenated (fresh memory is slow to touch on some hosts)."""
    planar, labels = [], []
    for name in TRAIN_BATCHES:
        rows, batch_labels = _planar_batch(files.pop(name), where=f"{where}:{name}")
        planar.append(rows)
        labels.append(batch_labels)
    images = np.empty((sum(rows.shape[0] for rows in planar), 32, 32, 3), np.uint8)
    start = 0
    for rows in planar:
        images[start : start + rows.shape[0]] = _nhwc(rows)
        start += rows.shape[0]
    return images, np.concatenate(labels)


# --------------------------------------------------------------------------
# Download


def download_archive(
    dest: pathlib.Path,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: ProgressFn | None = None,
    timeout: float = 60.0,
) -> pathlib.Path:
    """Downloads ``url`` to ``dest`` atomically, checking its md5.

    A wrong checksum or a connection that breaks off raises :class:`DataError`
    and leaves no file at ``dest`` (the partial download is deleted).
    """
    digest = hashlib.md5()
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            with atomic_open(dest, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                if total and done != total:
                    raise DataError(f"download of {url} broke off after {done} of {total} bytes; try again")
                if digest.hexdigest() != md5:
                    raise DataError(
                        f"download of {url} has md5 {digest.hexdigest()}, expected {md5}; "
                        "the file was discarded, try again or download it by hand"
                    )
    except DataError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(
            f"could not download CIFAR-10 from {url} ({exc}); offline? Set {ENV_VAR}=/path/to/"
            f"{ARCHIVE_NAME} (or its {BATCH_DIR}/ folder) or pass --data PATH"
        ) from None
    return dest


def _tqdm_progress(desc: str) -> tuple[ProgressFn, Callable[[], None]]:
    bars = []  # created on the first byte, so a failed connection prints no empty bar

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc=desc, total=total or None, unit="B", unit_scale=True, unit_divisor=1024))
        bars[0].update(done - bars[0].n)

    def close() -> None:
        if bars:
            bars[0].close()

    return update, close


# --------------------------------------------------------------------------
# Locating and caching


def resolve_source(
    path: str | os.PathLike | None = None, *, download: bool = True, progress: ProgressFn | None = None
) -> DataSource:
    """Finds CIFAR-10: explicit path, then ``LOWRANK_CIFAR10``, then the cache, then a download."""
    if path:
        if problem := paths.path_problem(path):
            raise DataError(f"data path: {problem}; expected {ARCHIVE_NAME} or a {BATCH_DIR}/ folder")
        return DataSource(pathlib.Path(path).expanduser(), "argument")
    env = os.environ.get(ENV_VAR)
    if env:
        candidate = pathlib.Path(env).expanduser()
        if paths.path_problem(env):
            raise DataError(f"{ENV_VAR}={env} does not exist; point it at {ARCHIVE_NAME} or a {BATCH_DIR}/ folder")
        return DataSource(candidate, "environment")
    cache = paths.data_dir()
    for candidate in (cache / ARCHIVE_NAME, cache / BATCH_DIR):
        if candidate.exists():
            return DataSource(candidate, "cache")
    if not download:
        raise DataMissing(f"CIFAR-10 not found: set {ENV_VAR}=/path/to/{ARCHIVE_NAME} or pass --data PATH")
    close = None
    if progress is None:
        progress, close = _tqdm_progress("Downloading CIFAR-10")
    try:
        return download_to_cache(progress)
    finally:
        if close:
            close()


def download_url() -> str:
    """Where a download fetches CIFAR-10 from (``LOWRANK_CIFAR10_URL`` for a mirror; md5 still checked)."""
    return os.environ.get(URL_ENV_VAR, CIFAR10_URL)


def download_to_cache(progress: ProgressFn | None = None) -> DataSource:
    """Downloads the official archive into the project's cache (md5-checked, atomic)."""
    dest = paths.data_dir() / ARCHIVE_NAME
    download_archive(dest, url=download_url(), md5=CIFAR10_MD5, progress=progress)
    return DataSource(dest, "download")


def _cache_key(path: pathlib.Path) -> str:
    """Keys the decoded cache by the source's path and the size and mtime of the
    files that are read: for a folder, only its batch files (never a walk of the
    tree: a data path of "/" or a home folder must not scan the disk)."""
    path = path.resolve()
    if path.is_file():
        files = [path]
    else:
        folder = _batch_folder(path)
        files = [folder / name for name in _NEEDED if (folder / name).is_file()]
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    fingerprint = json.dumps([_DECODE_VERSION, str(path), stats])
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:24]


def _load_decoded(cache_file: pathlib.Path) -> Cifar10 | None:
    try:
        with np.load(cache_file, allow_pickle=False) as npz:
            info = json.loads(str(npz["info"]))
            return Cifar10(
                x_train=npz["x_train"],
                y_train=npz["y_train"],
                x_test=npz["x_test"],
                y_test=npz["y_test"],
                class_names=tuple(info["class_names"]),
                source=info["source"],
                sha256=info["sha256"],
            )
    except Exception:
        return None  # missing or corrupt cache: decode again


# --------------------------------------------------------------------------
# TensorFlow Datasets (optional: the ``tfds`` extra)

TFDS = "tfds"  # as a data path: "tfds", or "tfds:/path/to/tfds_data_dir"
TFDS_ENV_VAR = "TFDS_DATA_DIR"
_TFDS_NAME = "cifar10"


def tfds_data_dir(path: str) -> str | None:
    """The TFDS data directory a "tfds[:DIR]" data path names (else $TFDS_DATA_DIR, else TFDS's default)."""
    _, _, directory = str(path).partition(":")
    return directory or os.environ.get(TFDS_ENV_VAR) or None


def is_tfds(path: str | os.PathLike | None) -> bool:
    return path is not None and (str(path) == TFDS or str(path).startswith(TFDS + ":"))


def load_tfds(data_dir: str | None = None) -> Cifar10:
    """CIFAR-10 as TensorFlow Datasets prepared it (``cifar10`` train and test
    splits in ``data_dir``), as the same uint8 NHWC arrays and int32 labels as the
    archive path. TensorFlow is imported only here. Nothing is downloaded: an
    unprepared directory is a one-line error saying what to do."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            "the tfds source needs TensorFlow Datasets: pip install -e '.[tfds]' (or use the CIFAR-10 archive)"
        ) from None
    logging.getLogger("absl").setLevel(logging.ERROR)  # tfds warns through absl; our error says it in one line
    where = data_dir or "TFDS's default data directory"
    arrays = {}
    try:
        builder = tfds.builder(_TFDS_NAME, data_dir=data_dir)
        class_names = tuple(builder.info.features["label"].names)
        for split in ("train", "test"):
            rows = list(tfds.as_numpy(tfds.load(_TFDS_NAME, split=split, data_dir=data_dir, download=False)))
            arrays[split] = (
                np.stack([r["image"] for r in rows]).astype(np.uint8),
                np.asarray([r["label"] for r in rows], np.int32),
            )
    except DataError:
        raise
    except Exception as exc:  # tfds reports an unprepared dataset in several ways
        raise DataError(
            f"cifar10 is not prepared in {where} ({type(exc).__name__}); prepare it with "
            f"`tfds build cifar10 --data_dir DIR` where the internet is reachable, set {TFDS_ENV_VAR}, "
            "or use the CIFAR-10 archive"
        ) from None
    (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
    if x_train.shape[1:] != IMAGE_SHAPE or x_test.shape[1:] != IMAGE_SHAPE or len(class_names) != NUM_CLASSES:
        raise DataError(f"tfds {_TFDS_NAME} in {where} is not CIFAR-10 shaped ({x_train.shape[1:]} images)")
    digest = hashlib.sha256()
    for array in (x_train, y_train, x_test, y_test):
        digest.update(np.ascontiguousarray(array).tobytes())
    return Cifar10(
        x_train, y_train, x_test, y_test, class_names, source=f"tfds:{_TFDS_NAME} ({where})", sha256=digest.hexdigest()
    )


def _tfds_cache_key(data_dir: str | None) -> str | None:
    """A key from the prepared files' paths, sizes and mtimes; None if none are on disk (nothing to key by)."""
    root = pathlib.Path(data_dir or os.path.expanduser("~/tensorflow_datasets")) / _TFDS_NAME
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    if not files:
        return None
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps([_DECODE_VERSION, "tfds", stats]).encode()).hexdigest()[:24]


def load_cifar10(
    path: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: ProgressFn | None = None,
    use_cache: bool = True,
) -> Cifar10:
    """Loads CIFAR-10 from the first source found (see :func:`resolve_source`).

    The decoded arrays are cached under ``artifacts/data/decoded/``; the cache
    is keyed by the source's path, size and mtime, so editing or replacing the
    source invalidates it. If the cache cannot be written (read-only disk) the
    data is still returned.
    """
    if is_tfds(path) or (path is None and is_tfds(os.environ.get(ENV_VAR))):
        data_dir = tfds_data_dir(path or os.environ[ENV_VAR])
        key = _tfds_cache_key(data_dir)
        cache_file = paths.data_dir() / "decoded" / f"{key}.npz" if key else None
        if use_cache and cache_file and (cached := _load_decoded(cache_file)) is not None:
            return cached
        data = load_tfds(data_dir)
        use_cache = use_cache and cache_file is not None
    else:
        source = resolve_source(path, download=download, progress=progress)
        cache_file = paths.data_dir() / "decoded" / f"{_cache_key(source.path)}.npz"
        if use_cache:
            return _once(str(cache_file), lambda: _load_decoded(cache_file) or _decoded(source.path, cache_file))
        data = read_source(source.path)
    if use_cache:
        _write_decoded(cache_file, data)
    return data


def _decoded(source: pathlib.Path, cache_file: pathlib.Path) -> Cifar10:
    """The source decoded; the decoded cache for the next load is written by a thread of its own,
    so the first load does not wait for it. Until it is written, loads in this process share this
    result (see :func:`_once`); the thread is not a daemon, so a CLI run finishes it before exiting."""
    data = read_source(source)
    key = str(cache_file)

    def write() -> None:
        try:
            with priority.background(compute_too=False):  # it runs no JAX: XLA's threads keep their priority
                _write_decoded(cache_file, data)
        finally:
            with _in_flight_lock:
                _in_flight.pop(key, None)
                _writing.discard(key)

    with _in_flight_lock:
        _writing.add(key)
    threading.Thread(target=write, name="decoded-cache-write").start()
    return data


WRITE_CHUNK = 8 << 20  # bytes of an array written between two pause points


def _write_decoded(cache_file: pathlib.Path, data: Cifar10) -> None:
    """The decoded arrays as an uncompressed ``.npz`` (what :func:`np.savez` writes), written
    atomically a chunk at a time with a pause point after each: written by a thread of its own
    while a page measures, it waits for the page (it used to take a core from the first page's
    measurement on two cores)."""
    info = json.dumps({"class_names": list(data.class_names), "source": data.source, "sha256": data.sha256})
    arrays = {
        "x_train": data.x_train,
        "y_train": data.y_train,
        "x_test": data.x_test,
        "y_test": data.y_test,
        "info": np.asarray(info),
    }
    try:
        with atomic_open(cache_file, "wb") as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    _write_array(member, np.asarray(array, order="C"))
    except OSError:
        pass  # a read-only or full disk only costs the next load its speed


def _write_array(member, array: np.ndarray) -> None:
    np.lib.format.write_array_header_1_0(member, np.lib.format.header_data_from_array_1_0(array))
    raw = memoryview(array.reshape(-1).view(np.uint8))
    for start in range(0, len(raw), WRITE_CHUNK):
        member.write(raw[start : start + WRITE_CHUNK])
        priority.pause_point()


_in_flight: dict[str, concurrent.futures.Future] = {}  # decoded-cache path → the load running for it
_writing: set[str] = set()  # decoded-cache paths whose file is being written (their load stays shared)
_in_flight_lock = threading.Lock()


def _once(key: str, load: Callable[[], Cifar10]) -> Cifar10:
    """``load()`` run once for however many threads ask for ``key`` at a time (two sessions
    starting together): the others wait for it and share its result."""
    with _in_flight_lock:
        future, owner = _in_flight.get(key), False
        if future is None:
            future, owner = concurrent.futures.Future(), True
            _in_flight[key] = future
    if not owner:
        return future.result()
    try:
        future.set_result(load())
    except BaseException as exc:
        future.set_exception(exc)
    finally:
        with _in_flight_lock:
            if key not in _writing and _in_flight.get(key) is future:
                del _in_flight[key]  # nothing kept: a later load reads the decoded cache
    return future.result()


_prefetched: set[str] = set()  # the sources :func:`prefetch` started loading in this process


def prefetch(path: str | os.PathLike | None = None) -> threading.Thread | None:
    """Starts :func:`load_cifar10` of ``path`` (never downloading) in a thread of its own, once per
    source and process, and returns it: an app's first page run, importing JAX meanwhile, then finds
    the load under way or done and shares it. Whatever goes wrong is left for that load to say."""
    key = str(path)
    with _in_flight_lock:
        if key in _prefetched:
            return None
        _prefetched.add(key)

    def load() -> None:
        try:
            load_cifar10(path, download=False)
        except Exception:  # the page's own load reports it, in the page's words
            pass

    # Not a daemon: a process ending meanwhile waits for the load (seconds) rather than stopping
    # it inside the decoder.
    thread = threading.Thread(target=load, name="lowrank-data-prefetch")
    thread.start()
    return thread


def describe_source(path: str | os.PathLike | None = None) -> str:
    """One line saying where data would be read from, without reading it."""
    if is_tfds(path) or (path is None and is_tfds(os.environ.get(ENV_VAR))):
        return f"TensorFlow Datasets cifar10 in {tfds_data_dir(path or os.environ[ENV_VAR]) or 'the default data dir'}"
    try:
        source = resolve_source(path, download=False)
    except DataError as exc:
        return str(exc)
    return f"{source.path} ({source.origin})"
