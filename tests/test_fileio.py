"""Atomic writes: permissions as open() gives them, without touching the process umask."""

import os
import stat

import pytest

from lowrank_core import fileio


def test_written_files_get_the_umask_permissions_without_reading_it(tmp_path, monkeypatch):
    previous = os.umask(0o027)
    try:
        # Changing the umask to read it would race other threads creating files: never call it.
        monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("atomic writes must not call os.umask"))
        fileio.atomic_write_bytes(tmp_path / "a.bin", b"x")
        fileio.atomic_write_json(tmp_path / "b.json", {"k": 1})
    finally:
        monkeypatch.undo()
        os.umask(previous)
    for name in ("a.bin", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]  # no temporary files left


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "c.json"
    fileio.atomic_write_json(target, {"v": "old"})
    with pytest.raises(RuntimeError):
        with fileio.atomic_open(target) as handle:
            handle.write(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().endswith("}") and '"old"' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]
