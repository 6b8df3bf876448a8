"""Checkpoints: a folder with ``params.npz`` and ``metadata.json``.

``params.npz`` holds one array per parameter under ``<module>/<param>`` (e.g.
``linear_2/w``), float32 or float16, read with ``allow_pickle=False``. The
folder is written beside its destination and renamed into place, so a crash
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import hashlib
import importlib.metadata
import io
import json
import os
import pathlib
import platform
import shutil
import tempfile
import zipfile
from typing import Any, Callable, NamedTuple, TypeVar

import numpy as np

from lowrank_core import model, paths
from lowrank_core.errors import CheckpointError
from lowrank_core.fileio import atomic_write_bytes, atomic_write_json

PARAMS_FILE = "params.npz"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


def flatten_params(params: model.Params) -> dict[str, np.ndarray]:
    """``{"module/param": array}`` from a Haiku params tree."""
    return {f"{m}/{p}": np.asarray(v) for m, ps in params.items() for p, v in ps.items()}


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The inverse of :func:`flatten_params`."""
    params: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        module, _, name = key.rpartition("/")
        if not module or not name:
            raise CheckpointError(f"{PARAMS_FILE} key {key!r} is not of the form <module>/<param>")
        params.setdefault(module, {})[name] = value
    return params


def _stored_dtype(key: str, value: np.ndarray, float_dtype) -> np.dtype:
    # int8 matrices stay int8 and their scales float32; every other float takes the storage dtype.
    if not np.issubdtype(value.dtype, np.floating) or key.endswith("_scale"):
        return value.dtype if not key.endswith("_scale") else np.dtype(np.float32)
    return np.dtype(float_dtype)


def as_stored(
    params: model.Params,
    float_dtype: np.dtype | str = np.float32,
    float32_modules: tuple[str, ...] = (),
    already_stored: model.Params | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """``params`` exactly as :func:`params_to_npz_bytes` stores them, read back
    (floats rounded to ``float_dtype``, computed in float32): what a variant is measured as.
    Arrays that are the very arrays of ``already_stored`` (a tree this returned for ``float_dtype``, e.g.
    the checkpoint's layers a variant left alone) are passed through: they are stored values
    already, and rounding them again only costs fresh memory."""
    out = {}
    for module, layer in params.items():
        out[module] = {}
        kept = (already_stored or {}).get(module, {})
        for key, value in layer.items():
            if key in kept and value is kept[key]:
                out[module][key] = value
                continue
            value = np.asarray(value)
            dtype = _stored_dtype(key, value, np.float32 if module in float32_modules else float_dtype)
            stored = value.astype(dtype)
            out[module][key] = stored.astype(np.float32) if np.issubdtype(dtype, np.floating) else stored
    return out


def params_to_npz_bytes(
    params: model.Params, dtype: np.dtype | str = np.float32, float32_modules: tuple[str, ...] = ()
) -> bytes:
    """The bytes of a ``params.npz`` holding ``params`` (the product's stored format):
    one array per ``<module>/<param>``; float arrays as ``dtype`` (float32 in
    ``float32_modules``), int8 matrices (``<key>_q``) as int8 with float32 ``<key>_scale``."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        **{
            k: v.astype(_stored_dtype(k, v, np.float32 if k.rpartition("/")[0] in float32_modules else dtype))
            for k, v in flatten_params(params).items()
        },
    )
    return buffer.getvalue()


def variant_from_npz_bytes(blob: bytes) -> dict[str, dict[str, np.ndarray]]:
    """A variant's params tree from its exported ``.npz`` bytes: floats as float32,
    int8 matrices and their scales as stored (what :func:`model.forward` runs)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        flat = {k: npz[k] for k in npz.files}
    return unflatten_params(
        {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in flat.items()}
    )


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "dm-haiku", "optax", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def _retired_copies(directory: pathlib.Path) -> list[pathlib.Path]:
    """Complete older checkpoints a save moved aside (newest first)."""
    found = [
        p
        for p in directory.parent.glob(f".{directory.name}.old.*/{directory.name}")
        if (p / PARAMS_FILE).is_file() and (p / METADATA_FILE).is_file()
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def recover(directory: str | os.PathLike) -> None:
    """Puts the previous checkpoint back if a save was killed between its two
    renames (the folder moved aside, the new one not yet in place)."""
    directory = pathlib.Path(directory)
    if directory.exists():
        return
    for candidate in _retired_copies(directory):
        with contextlib.suppress(OSError):  # another process may have restored it first
            os.replace(candidate, directory)
            return


def save(
    directory: str | os.PathLike, params: model.Params, metadata: dict[str, Any], *, dtype: np.dtype | str = np.float32
) -> pathlib.Path:
    """Writes a checkpoint folder atomically (a new folder renamed over the old).

    The old folder is moved aside, then the new one renamed into place: a crash
    between the two leaves the old one aside, and :func:`recover` (run by every
    load and save) puts it back, so either the old or the new checkpoint loads.
    """
    directory = pathlib.Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover(directory)
    metadata = dict(metadata, format_version=FORMAT_VERSION, storage_dtype=np.dtype(dtype).name)
    metadata.setdefault("library_versions", library_versions())
    metadata.setdefault("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.new.", dir=directory.parent))
    try:
        atomic_write_bytes(staging / PARAMS_FILE, params_to_npz_bytes(params, dtype))
        atomic_write_json(staging / METADATA_FILE, metadata)
        if directory.exists():
            retired = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, retired / directory.name)
            os.replace(staging, directory)
        else:
            os.replace(staging, directory)
        for old in directory.parent.glob(f".{directory.name}.old.*"):  # this one's, and any a crash left
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def trained_dir(name: str) -> pathlib.Path:
    """Where ``train`` writes a checkpoint of that name (a preset's, by default)."""
    return paths.artifacts_dir() / "checkpoints" / name


def trained_label(name: str) -> str:
    """How a picker names the checkpoint trained under ``name``."""
    return f"trained here: {name}"


def known_checkpoints() -> dict[str, pathlib.Path]:
    """Checkpoints to pick from, by label: the shipped baseline, then every one trained here
    (folders under the artifacts' ``checkpoints/`` holding a params and a metadata file)."""
    found = {"shipped baseline": paths.BASELINE_DIR}
    for root, label in ((trained_dir("x").parent, trained_label), (uploads_dir(), upload_label)):
        if root.is_dir():
            for folder in sorted(root.iterdir()):
                complete = (folder / PARAMS_FILE).is_file() and (folder / METADATA_FILE).is_file()
                if complete and not folder.name.startswith("."):
                    found[label(folder.name)] = folder
    return found


def uploads_dir() -> pathlib.Path:
    """Where uploaded checkpoints are kept, one folder per content digest."""
    return paths.artifacts_dir() / "uploads"


def upload_label(name: str) -> str:
    return f"uploaded: {name}"


def store_upload(params_bytes: bytes, metadata_bytes: bytes | None = None) -> pathlib.Path:
    """Keeps an uploaded checkpoint under :func:`uploads_dir`, named by the sha256 of its params
    (the same upload twice is one folder). Every bound of :func:`load_params` and
    :func:`load_metadata` is checked on a staging copy before it is published (atomic rename);
    without a metadata file, one is written saying only the storage dtype."""
    if len(params_bytes) > MAX_PARAMS_BYTES or len(metadata_bytes or b"") > MAX_METADATA_BYTES:
        raise CheckpointError(
            f"an upload is at most {MAX_PARAMS_BYTES:,} bytes of params and "
            f"{MAX_METADATA_BYTES:,} of metadata; not stored"
        )
    final = uploads_dir() / hashlib.sha256(params_bytes).hexdigest()[:16]
    if (final / PARAMS_FILE).is_file():
        return final
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".upload-", dir=_made(uploads_dir())))
    try:
        (staging / PARAMS_FILE).write_bytes(params_bytes)
        params = load_params(staging)  # bounded, every header and the network checked first
        if metadata_bytes is None:
            dtype = {str(v.dtype) for ps in param_shapes(staging).values() for v in ps.values()}
            metadata_bytes = json.dumps({"storage_dtype": "float16" if dtype == {"float16"} else "float32"}).encode()
        (staging / METADATA_FILE).write_bytes(metadata_bytes)
        load_metadata(staging)
        del params
        try:
            os.rename(staging, final)
        except OSError:  # published meanwhile by another session: the same content
            if not (final / PARAMS_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _made(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Bounds checked before anything is read or inflated: the seed network's params are ≈ 85 MB in
# float32, its metadata a few kB. A file past them is refused unread.
MAX_METADATA_BYTES = 1 * 2**20
MAX_PARAMS_BYTES = 256 * 2**20


def _read_capped(path: pathlib.Path, cap: int) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes (a FIFO or device is refused unread)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing or not a regular file; is {path.parent} a checkpoint folder?")
    if path.stat().st_size > cap:
        raise CheckpointError(f"{path} is {path.stat().st_size:,} bytes, more than a checkpoint's {cap:,}; not read")
    with open(path, "rb") as handle:
        blob = handle.read(cap + 1)
    if len(blob) > cap:  # grew while being read
        raise CheckpointError(f"{path} is more than {cap:,} bytes; not read")
    return blob


def load_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's metadata; a clear error if missing, oversized or unreadable."""
    recover(directory)
    path = pathlib.Path(directory) / METADATA_FILE
    if not path.exists():
        raise CheckpointError(f"{path} is missing; is {directory} a checkpoint folder?")
    try:
        metadata = json.loads(_read_capped(path, MAX_METADATA_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(
            f"{path} is unreadable ({type(exc).__name__}); retrain or restore the checkpoint"
        ) from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return metadata


def _npy_headers(archive: zipfile.ZipFile) -> dict[str, tuple[zipfile.ZipInfo, tuple[int, ...], np.dtype]]:
    """Each member's key, shape and dtype from its ``.npy`` header alone; a member whose
    declared size is not exactly its header plus its data is refused before it is inflated."""
    headers, total = {}, 0
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise ValueError(f"member {info.filename!r} is not an array")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(member, max_header_size=10_000)
            header_bytes = member.tell()
        if dtype.hasobject:
            raise ValueError(f"'{info.filename}' holds Python objects")
        expected = header_bytes + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        total += info.file_size
        if info.file_size != expected:
            raise ValueError(f"'{info.filename}' declares {info.file_size:,} bytes for a {shape} {dtype} array")
        if total > MAX_PARAMS_BYTES:
            raise ValueError(f"its arrays declare more than a checkpoint's {MAX_PARAMS_BYTES:,} bytes; not inflated")
        headers[info.filename[: -len(".npy")]] = (info, tuple(shape), dtype)
    return headers


def _shapes_only(headers) -> dict[str, dict[str, np.ndarray]]:
    return unflatten_params(
        {key: np.broadcast_to(np.zeros((), dtype), shape) for key, (_, shape, dtype) in headers.items()}
    )


def param_shapes(directory: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """The checkpoint's parameters as zero-strided arrays of their stored shapes and
    dtypes, read from the ``.npz`` members' headers alone (no weight is read): what
    a first paint needs, milliseconds instead of reading and converting every weight.
    The shapes are checked to form one network (:func:`model.spec_of`)."""
    path = pathlib.Path(directory) / PARAMS_FILE
    try:
        with zipfile.ZipFile(io.BytesIO(_read_capped(path, MAX_PARAMS_BYTES))) as archive:
            params = _shapes_only(_npy_headers(archive))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is unreadable or truncated ({exc}); retrain or restore it") from None
    try:
        model.spec_of(params)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return params


def _read_params(path: pathlib.Path, blob: bytes, check: bool) -> dict[str, np.ndarray]:
    """The arrays of a params file, each header (and, with ``check``, the network the shapes
    form) judged before any array's data is inflated."""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        headers = _npy_headers(archive)
        for key, (_, _, dtype) in headers.items():
            if not np.issubdtype(dtype, np.floating):
                raise CheckpointError(f"{path}: '{key}' has dtype {dtype}, expected float")
        if check:
            try:
                model.spec_of(_shapes_only(headers))
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
        flat = {}
        for key, (info, _, _) in headers.items():
            with archive.open(info) as member:  # reads at most the declared size, checked above
                flat[key] = np.lib.format.read_array(member, allow_pickle=False)
    return flat


def load_params(directory: str | os.PathLike, *, check: bool = True, with_digest: bool = False):
    """Reads ``params.npz`` as float32, checking finiteness and (if ``check``) that
    the shapes form one network (:func:`model.spec_of`).

    Every bound is checked before the data it guards is read: the file's size, each
    member's declared size against its array header, the network the headers
    describe. The file is read once; with ``with_digest`` the sha256 of exactly those
    bytes comes back too, so a cache keyed by it can never describe other
    weights than the ones loaded. Returns params, or (params, digest).
    """
    recover(directory)
    path = pathlib.Path(directory) / PARAMS_FILE
    if not path.exists():
        raise CheckpointError(f"{path} is missing; is {directory} a checkpoint folder?")
    try:
        blob = _read_capped(path, MAX_PARAMS_BYTES)
        flat = _read_params(path, blob, check)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{path} is unreadable or truncated ({exc}); retrain or restore it") from None
    for key, value in flat.items():
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{path}: '{key}' holds NaN or infinite values")
    params = {m: {p: v.astype(np.float32) for p, v in ps.items()} for m, ps in unflatten_params(flat).items()}
    if check:
        try:
            model.spec_of(params)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return (params, hashlib.sha256(blob).hexdigest()) if with_digest else params


def load(directory: str | os.PathLike) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """(params, metadata) of a checkpoint folder."""
    params, metadata, _ = load_with_digest(directory)
    return params, metadata


def load_with_digest(directory: str | os.PathLike) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any], str]:
    """(params, metadata, sha256 of the params bytes read) of a checkpoint folder."""
    directory = pathlib.Path(directory)
    recover(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    params, digest = load_params(directory, with_digest=True)
    return params, load_metadata(directory), digest


class Loaded(NamedTuple):
    """A checkpoint as a variant is built from it."""

    params: dict[str, dict[str, np.ndarray]]  # as its storage dtype holds them (:func:`as_stored`)
    metadata: dict[str, Any]
    sha256: str  # of the params bytes read


def load_stored(directory: str | os.PathLike) -> Loaded:
    """The checkpoint in ``directory``, its params rounded as stored."""
    params, metadata, digest = load_with_digest(directory)
    return Loaded(as_stored(params, metadata.get("storage_dtype", "float32")), metadata, digest)


Result = TypeVar("Result")


def load_beside(directory: str | os.PathLike, work: Callable[[], Result]) -> tuple[Loaded, Result]:
    """:func:`load_stored` while ``work()`` runs in a second thread (each is seconds of one core:
    CIFAR-10 read and decoded beside the checkpoint). ``work``'s error is raised first, as if it
    had run first."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lowrank-load") as pool:
        other = pool.submit(work)
        try:
            loaded = load_stored(directory)
        except Exception:
            other.result()
            raise
        return loaded, other.result()
