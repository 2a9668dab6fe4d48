"""A worker keeps Redis bounded: a finished job's bytes get the short TTL, a running job's time-lapse
frames are capped in bytes as well as in count."""

from __future__ import annotations

import os
import time
from pathlib import Path

import fakeredis
import pytest

from shared.jobs import JobRecord, queue_for
from shared.keys import Keys
from shared.settings import Settings
from shared.storage import DirectoryStore, result_key, timelapse_key
from worker.progress import FrameWriter, thinned
from worker.runner import run_job

KEYS = Keys("unit-bytes")


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_prefix": "unit-bytes",
        "model": "tiny",
        "device": "cpu",
        "models_dir": tmp_path,
        "preview_every": 2,
        "batch_size": 1,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type,call-arg]


def test_a_finished_job_keeps_its_record_long_and_its_pictures_briefly(tmp_path: Path) -> None:
    settings = _settings(tmp_path, finished_bytes_ttl_s=77, job_ttl_s=86400)
    client = fakeredis.FakeRedis()
    store = DirectoryStore(tmp_path / "results")
    record = JobRecord.model_validate(
        {
            "id": f"job{time.monotonic_ns()}",
            "prompt": "a lighthouse",
            "model": "tiny",
            "width": 32,
            "height": 32,
            "iterations": 6,
            "seed": 3,
            "cutn": 4,
            "preview_every": 2,
        }
    )
    client.hset(KEYS.job(record.id), mapping=record.to_redis())
    client.zadd(KEYS.queued(queue_for("tiny")), {record.id: record.created_at})

    state = run_job(client, settings, record.id, "w1", lambda *_: None, store)
    assert state is not None and state.value == "succeeded"

    for key in (KEYS.result(record.id), KEYS.frame(record.id), KEYS.frames(record.id)):
        assert client.exists(key) and 0 < client.ttl(key) <= 77, key
    # The time-lapse is stored after the end; its Redis copy has the short TTL too.
    assert store.exists(timelapse_key(record.id)) and store.exists(result_key(record.id))
    assert 0 < client.ttl(KEYS.timelapse(record.id)) <= 77
    for key in (KEYS.job(record.id), KEYS.events(record.id)):
        assert client.ttl(key) > 77, key


def test_thinning_halves_until_under_both_caps_and_keeps_the_ends() -> None:
    frames = [bytes([i]) * 100 for i in range(10)]
    assert thinned(frames, max_frames=60, max_bytes=10_000) == frames
    by_count = thinned(frames, max_frames=8, max_bytes=10_000)
    assert len(by_count) <= 8 and by_count[0] == frames[0] and by_count[-1] == frames[-1]
    by_bytes = thinned(frames, max_frames=60, max_bytes=350)
    assert sum(map(len, by_bytes)) <= 350 and by_bytes[0] == frames[0] and by_bytes[-1] == frames[-1]
    # A cap too small for any two frames still leaves the first and the newest.
    assert thinned(frames, max_frames=60, max_bytes=1) == [frames[0], frames[-1]]


@pytest.mark.parametrize("resumed", [False, True])
def test_the_frames_list_stays_under_its_byte_cap(tmp_path: Path, resumed: bool) -> None:
    cap = 64 * 1024
    settings = _settings(tmp_path, timelapse_max_bytes=cap, timelapse_max_frames=60)
    client = fakeredis.FakeRedis()
    job_id = "capped"
    if resumed:  # another worker stored frames before this one took the job over
        client.rpush(KEYS.frames(job_id), *[os.urandom(10_000) for _ in range(5)])
    writer = FrameWriter(client, KEYS, job_id, settings)
    try:
        for iteration in range(40):
            writer.store(os.urandom(10_000), iteration)
            total = sum(map(len, client.lrange(KEYS.frames(job_id), 0, -1)))
            assert total <= cap, f"{total} bytes after frame {iteration}"
    finally:
        writer.close()
    assert client.llen(KEYS.frames(job_id)) >= 2
