"""The directory result store on a real disk: round trips, atomic replace, keys that try to escape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.settings import Settings
from shared.storage import (
    DirectoryStore,
    InvalidKey,
    S3Store,
    check_key,
    make_store,
    result_key,
    timelapse_key,
)

JOB = "6f1c2b1e-7d3a-4c55-9a0e-2f4b8d1c9e77"


def test_round_trip(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "results")
    assert store.get(result_key(JOB)) is None
    assert not store.exists(result_key(JOB))

    store.put(result_key(JOB), b"\x89PNG picture", "image/png")
    store.put(timelapse_key(JOB), b"RIFF webp", "image/webp")

    assert store.get(result_key(JOB)) == b"\x89PNG picture"
    assert store.exists(result_key(JOB)) and store.exists(timelapse_key(JOB))
    assert (tmp_path / "results" / JOB / "result.png").read_bytes() == b"\x89PNG picture"


def test_put_replaces_whole_file_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.put(result_key(JOB), b"first version, longer than the second", "image/png")
    store.put(result_key(JOB), b"second", "image/png")
    assert store.get(result_key(JOB)) == b"second"
    assert sorted(p.name for p in (tmp_path / JOB).iterdir()) == ["result.png"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DirectoryStore(tmp_path)
    store.put(result_key(JOB), b"old", "image/png")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        store.put(result_key(JOB), b"new", "image/png")
    monkeypatch.undo()
    assert store.get(result_key(JOB)) == b"old"
    assert sorted(p.name for p in (tmp_path / JOB).iterdir()) == ["result.png"]


def test_delete_removes_file_and_empty_job_folder(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.put(result_key(JOB), b"a", "image/png")
    store.put(timelapse_key(JOB), b"b", "image/webp")

    store.delete(result_key(JOB))
    assert not store.exists(result_key(JOB)) and store.exists(timelapse_key(JOB))
    store.delete(timelapse_key(JOB))
    assert not (tmp_path / JOB).exists()
    store.delete(timelapse_key(JOB))  # deleting what is gone is not an error
    assert tmp_path.is_dir()


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../outside.png",
        f"{JOB}/../../outside.png",
        "/etc/passwd",
        f"{JOB}//result.png",
        f"{JOB}/",
        ".hidden",
        f"{JOB}/.tmp-x.part",
        "a\\..\\b",
        "a\x00b",
        "x" * 600,
    ],
)
def test_keys_that_could_escape_are_refused(tmp_path: Path, key: str) -> None:
    store = DirectoryStore(tmp_path / "root")
    with pytest.raises(InvalidKey):
        store.put(key, b"x", "image/png")
    with pytest.raises(InvalidKey):
        store.get(key)
    with pytest.raises(InvalidKey):
        store.delete(key)
    assert not (tmp_path / "outside.png").exists()


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / JOB).symlink_to(outside, target_is_directory=True)
    store = DirectoryStore(root)
    with pytest.raises(InvalidKey, match="outside"):
        store.put(result_key(JOB), b"x", "image/png")
    assert list(outside.iterdir()) == []


def test_check_key_accepts_the_service_keys() -> None:
    assert check_key(result_key(JOB)) == f"{JOB}/result.png"
    assert check_key(timelapse_key(JOB)) == f"{JOB}/timelapse.webp"


def test_make_store_follows_settings(tmp_path: Path) -> None:
    store = make_store(Settings(results_dir=tmp_path / "r"))
    assert isinstance(store, DirectoryStore) and store.root == tmp_path / "r"

    s3 = make_store(
        Settings(
            result_store="s3",
            s3_bucket="artgen-results",
            s3_endpoint_url="http://127.0.0.1:9",
            s3_region="us-east-1",
            s3_access_key_id=SecretStr("AKIAEXAMPLEEXAMPLE"),
            s3_secret_access_key=SecretStr("not-a-real-secret-but-long"),
        )
    )
    assert isinstance(s3, S3Store) and s3.bucket == "artgen-results"
    # Secrets never show in the store's repr (it ends up in logs).
    assert "not-a-real-secret" not in repr(s3)


def test_s3_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="ARTGEN_S3_BUCKET"):
        Settings(result_store="s3")
    with pytest.raises(ValueError, match="both"):
        Settings(result_store="s3", s3_bucket="b", s3_access_key_id=SecretStr("only-the-id"))
