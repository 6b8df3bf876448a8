"""Checkpoints: a folder with ``params.npz`` and ``metadata.json``.

``params.npz`` holds one array per parameter under ``<module>/<param>`` (e.g.
``linear_2/w``), float32 or float16, read with ``allow_pickle=False``. The
folder is written beside its destination and renamed into place, so a crash
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import io
import json
import os
import pathlib
import platform
import shutil
import tempfile
import zipfile
from typing import Any

import numpy as np

from lowrank_core import model
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


def params_to_npz_bytes(params: model.Params, dtype: np.dtype | str = np.float32) -> bytes:
    """The bytes of a ``params.npz`` holding ``params`` stored as ``dtype``."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.astype(dtype) for k, v in flatten_params(params).items()})
    return buffer.getvalue()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "dm-haiku", "optax", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def save(directory: str | os.PathLike, params: model.Params, metadata: dict[str, Any],
         *, dtype: np.dtype | str = np.float32) -> pathlib.Path:
    """Writes a checkpoint folder atomically (a new folder renamed over the old)."""
    directory = pathlib.Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    metadata = dict(metadata, format_version=FORMAT_VERSION, storage_dtype=np.dtype(dtype).name)
    metadata.setdefault("library_versions", library_versions())
    metadata.setdefault("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        atomic_write_bytes(staging / PARAMS_FILE, params_to_npz_bytes(params, dtype))
        atomic_write_json(staging / METADATA_FILE, metadata)
        if directory.exists():
            retired = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, retired / directory.name)
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's metadata; a clear error if missing or unreadable."""
    path = pathlib.Path(directory) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; is {directory} a checkpoint folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); retrain or restore the checkpoint") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return metadata


def load_params(directory: str | os.PathLike, *, check: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Reads ``params.npz`` as float32, checking finiteness and (if ``check``) the architecture."""
    path = pathlib.Path(directory) / PARAMS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; is {directory} a checkpoint folder?")
    try:
        with np.load(path, allow_pickle=False) as npz:
            flat = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{path} is unreadable or truncated ({exc}); retrain or restore it") from None
    for key, value in flat.items():
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f"{path}: '{key}' has dtype {value.dtype}, expected float")
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{path}: '{key}' holds NaN or infinite values")
    params = {m: {p: v.astype(np.float32) for p, v in ps.items()} for m, ps in unflatten_params(flat).items()}
    if check:
        try:
            model.check_params(params)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return params


def load(directory: str | os.PathLike) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """(params, metadata) of a checkpoint folder of the seed architecture."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    return load_params(directory), load_metadata(directory)
