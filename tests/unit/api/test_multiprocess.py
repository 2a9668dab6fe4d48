"""`api.multiprocess.metrics_dir`: a fresh metrics directory per start of several processes, none for one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from api.multiprocess import MULTIPROC_ENV, metrics_dir, multiprocess_dir


def test_several_processes_get_a_new_empty_directory_removed_at_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the directory it found first
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "left-over"))
    seen = []
    for _ in range(2):
        with metrics_dir(2) as path:
            assert path is not None and multiprocess_dir() == path == os.environ[MULTIPROC_ENV]
            assert Path(path).parent == tmp_path and list(Path(path).iterdir()) == []
            (Path(path) / "counter_1.db").write_bytes(b"counts of this start")
            seen.append(path)
        assert not Path(path).exists() and multiprocess_dir() is None
    assert seen[0] != seen[1]


def test_one_process_uses_no_directory_whatever_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "/nonexistent/stale")
    with metrics_dir(1) as path:
        assert path is None and multiprocess_dir() is None
