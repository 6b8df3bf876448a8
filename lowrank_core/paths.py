"""Where the project keeps its files.

``artifacts/`` beside the package holds the shipped baseline and every cache.
``LOWRANK_ARTIFACTS`` moves the caches elsewhere (tests use a temporary
folder); the shipped baseline always stays in the repository.
"""

from __future__ import annotations

import os
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
BASELINE_DIR = REPO_ROOT / "artifacts" / "baseline"
ARTIFACTS_ENV = "LOWRANK_ARTIFACTS"


def artifacts_dir() -> pathlib.Path:
    """The folder for caches and user-trained checkpoints."""
    override = os.environ.get(ARTIFACTS_ENV)
    return pathlib.Path(override).expanduser() if override else REPO_ROOT / "artifacts"


def path_problem(text: str | os.PathLike) -> str | None:
    """Why ``text`` is not an existing path (missing, unreadable name: too long, NUL
    bytes, permissions), or None if it exists."""
    try:
        path = pathlib.Path(text).expanduser()
        return None if path.exists() else f"{text} does not exist"
    except (OSError, ValueError, RuntimeError) as exc:
        shown = str(text) if len(str(text)) <= 80 else str(text)[:77] + "…"
        reason = getattr(exc, "strerror", None) or str(exc)
        return f"{shown!r} is not a usable path ({reason})"


def data_dir() -> pathlib.Path:
    """The project's own data cache: a downloaded archive and decoded arrays."""
    return artifacts_dir() / "data"
