"""Measured results on disk: one JSON file per variant, carrying a hash of its payload.

A file whose hash does not match (a crash mid-write, a disk error, an edit)
is treated as missing and recomputed, never trusted. When the folder cannot
be written (read-only, full disk) results are kept in memory and
:attr:`ResultStore.write_problem` says so.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import threading

from lowrank_core.fileio import atomic_write_json

MAX_RECORD_BYTES = 16 * 2**20  # a record with per-layer latency and every runtime is a few kB


def payload_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class ResultStore:
    """Hashed result records under ``directory``, with a memory fallback."""

    def __init__(self, directory: pathlib.Path):
        self.directory = pathlib.Path(directory)
        self.write_problem: str | None = None
        self._memory: dict[str, dict] = {}
        self._lock = threading.Lock()  # guards the memory dict only; never held across I/O of others

    def path(self, key: str) -> pathlib.Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The record under ``key`` (memory, then disk) if present and intact."""
        with self._lock:
            if key in self._memory:
                return self._memory[key]
        return self._read(self.path(key))

    def put(self, key: str, record: dict) -> None:
        """Stores ``record`` atomically; keeps it in memory if the disk refuses."""
        try:
            atomic_write_json(self.path(key), {"sha256": payload_hash(record), "payload": record})
        except OSError as exc:
            self.write_problem = f"cannot write the cache under {self.directory} ({exc.strerror or exc})"
            with self._lock:
                self._memory[key] = record

    def all(self) -> dict[str, dict]:
        """Every intact record, by key."""
        found = {p.stem: r for p in sorted(self.directory.glob("*.json")) if (r := self._read(p)) is not None}
        with self._lock:
            found.update(self._memory)
        return found

    def clear(self) -> int:
        """Deletes every record (disk and memory); returns how many went."""
        with self._lock:
            removed = len(self._memory)
            self._memory.clear()
        for path in self.directory.glob("*.json"):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
        return removed

    @staticmethod
    def _read(path: pathlib.Path) -> dict | None:
        try:
            if path.stat().st_size > MAX_RECORD_BYTES:  # bounded before it is read
                return None
            stored = json.loads(path.read_text())
            payload = stored["payload"]
            return payload if payload_hash(payload) == stored["sha256"] else None
        except Exception:
            return None  # missing, truncated or corrupt: recompute
