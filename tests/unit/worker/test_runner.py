"""The job runner against fakeredis (with Lua) and the real engine on the `tiny` preset."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import fakeredis
import numpy as np
import pytest
import torch
from PIL import Image

from shared.jobs import JobRecord, JobState, queue_for
from shared.keys import Keys
from shared.settings import Settings
from shared.storage import DirectoryStore, result_key, timelapse_key
from shared.transitions import CANCEL_IF_QUEUED
from worker.runner import run_job

KEYS = Keys("unit")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        redis_prefix="unit",
        model="tiny",
        device="cpu",
        models_dir=tmp_path,
        checkpoint_every=4,
        preview_every=2,
    )


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


class Requeued(list[tuple[str, str]]):
    """Records what the runner puts back on the queue (the Celery producer's place in these tests)."""

    def __call__(self, job_id: str, queue: str) -> None:
        self.append((job_id, queue))


@pytest.fixture
def requeued() -> Requeued:
    return Requeued()


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "results")


def queue_job(client: fakeredis.FakeRedis, **fields: object) -> JobRecord:
    params: dict[str, object] = {
        "id": f"job{time.monotonic_ns()}",
        "prompt": "a lighthouse at dusk",
        "model": "tiny",
        "width": 32,
        "height": 32,
        "iterations": 8,
        "seed": 11,
        "cutn": 4,
        "preview_every": 2,
    }
    params.update(fields)
    record = JobRecord.model_validate(params)
    client.hset(KEYS.job(record.id), mapping=record.to_redis())
    client.zadd(KEYS.queued(queue_for(record.model)), {record.id: record.created_at})
    return record


def read(client: fakeredis.FakeRedis, job_id: str) -> JobRecord:
    return JobRecord.from_redis(client.hgetall(KEYS.job(job_id)))


def events(client: fakeredis.FakeRedis, job_id: str) -> list[tuple[str, dict[str, object]]]:
    return [
        (fields[b"event"].decode(), json.loads(fields[b"data"]))
        for _, fields in client.xrange(KEYS.events(job_id))
    ]


def test_a_job_runs_to_the_end(
    client: fakeredis.FakeRedis, settings: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    record = queue_job(client)
    assert run_job(client, settings, record.id, "w1", requeued, store) is JobState.SUCCEEDED

    final = read(client, record.id)
    assert final.state is JobState.SUCCEEDED and final.iteration == 8 and final.worker == "w1"
    assert final.attempts == 1 and final.started_at and final.finished_at
    assert final.frame_seq >= 4  # iteration 1, then every 2nd
    assert client.zcard(KEYS.queued(queue_for("tiny"))) == 0
    assert not client.exists(KEYS.lock(record.id)) and not client.exists(KEYS.checkpoint(record.id))
    result = Image.open(io.BytesIO(client.get(KEYS.result(record.id))))
    assert result.size == (32, 32) and result.text["seed"] == "11"
    # The durable copies: the same picture, and the time-lapse of the kept frames.
    assert store.get(result_key(record.id)) == client.get(KEYS.result(record.id))
    timelapse = Image.open(io.BytesIO(store.get(timelapse_key(record.id)) or b""))
    # (WebP merges identical neighbours: early frames often are, until a latent crosses a code boundary)
    assert timelapse.format == "WEBP" and 1 <= timelapse.n_frames <= client.llen(KEYS.frames(record.id))

    stream = events(client, record.id)
    progress = [data["iteration"] for kind, data in stream if kind == "progress"]
    assert progress == list(range(1, 9))
    assert any(kind == "frame" for kind, _ in stream)
    assert stream[-1] == ("finished", {"state": "succeeded", "error": None})
    # Every key of the job expires.
    assert all(client.ttl(key) > 0 for key in KEYS.all_for_job(record.id) if client.exists(key))


def test_a_job_canceled_while_queued_never_starts(
    client: fakeredis.FakeRedis, settings: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    record = queue_job(client)
    assert client.eval(CANCEL_IF_QUEUED, 1, KEYS.job(record.id), time.time()) == 1
    assert run_job(client, settings, record.id, "w1", requeued, store) is JobState.CANCELED
    final = read(client, record.id)
    assert final.started_at is None and final.iteration == 0 and final.attempts == 0


def test_the_cancel_flag_stops_a_running_job(
    client: fakeredis.FakeRedis, settings: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    record = queue_job(client, iterations=50)
    client.set(KEYS.cancel(record.id), "1")
    assert run_job(client, settings, record.id, "w1", requeued, store) is JobState.CANCELED
    assert read(client, record.id).iteration < 50
    assert not client.exists(KEYS.result(record.id)) and not store.exists(result_key(record.id))


def test_a_job_held_by_another_worker_is_not_run_twice(
    client: fakeredis.FakeRedis, settings: Settings
) -> None:
    record = queue_job(client)
    client.set(KEYS.lock(record.id), "other-worker", ex=30)
    assert run_job(client, settings, record.id, "w1", requeued, store) is JobState.RUNNING
    assert read(client, record.id).state is JobState.QUEUED
    assert client.get(KEYS.lock(record.id)) == b"other-worker"


def test_a_job_that_keeps_killing_workers_ends_failed(
    client: fakeredis.FakeRedis, settings: Settings
) -> None:
    record = queue_job(client, attempts=settings.max_attempts, state="running")
    assert run_job(client, settings, record.id, "w1", requeued, store) is JobState.FAILED
    assert "gave up after 3 attempts" in (read(client, record.id).error or "")


def test_a_missing_model_fails_with_how_to_get_it(
    client: fakeredis.FakeRedis, settings: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    record = queue_job(client, model="imagenet-16384")
    assert run_job(client, settings, record.id, "w1", requeued, store) is JobState.FAILED
    assert "artgen models pull imagenet-16384" in (read(client, record.id).error or "")


def died_at_4(client: fakeredis.FakeRedis, settings: Settings, record: JobRecord, **config: object) -> None:
    """Store the checkpoint a worker that died after iteration 4 of `record` (8 iterations) left."""
    from worker.engine import GenerationConfig, Painter
    from worker.models import get_models

    painter = Painter(
        get_models("tiny", settings.models_dir, "cpu"),
        GenerationConfig(
            prompts=record.prompt, width=32, height=32, iterations=8, seed=record.seed, cutn=4, **config
        ),  # type: ignore[arg-type]
    )
    for _ in range(4):
        painter.step()
    buffer = io.BytesIO()
    torch.save(painter.state_dict(), buffer)
    client.set(KEYS.checkpoint(record.id), buffer.getvalue())


def test_resuming_from_a_checkpoint_gives_the_same_picture(
    client: fakeredis.FakeRedis, settings: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    whole = queue_job(client, seed=5)
    run_job(client, settings, whole.id, "w1", requeued, store)

    # A job whose first worker died after iteration 4: its record says running, its checkpoint is there.
    resumed = queue_job(client, seed=5, state="running", attempts=1, iteration=4)
    died_at_4(client, settings, resumed)

    assert run_job(client, settings, resumed.id, "w2", requeued, store) is JobState.SUCCEEDED
    final = read(client, resumed.id)
    assert final.resumed_from == 4 and final.attempts == 2 and final.iteration == 8
    progress = [data["iteration"] for kind, data in events(client, resumed.id) if kind == "progress"]
    assert progress == [5, 6, 7, 8]  # it did not start again from zero
    same = [Image.open(io.BytesIO(client.get(KEYS.result(j.id)))).tobytes() for j in (whole, resumed)]
    assert same[0] == same[1]


def test_a_shutting_down_worker_hands_its_job_back(
    client: fakeredis.FakeRedis, settings: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    record = queue_job(client, iterations=8)
    client.set(KEYS.shutdown("w1"), "1")
    assert run_job(client, settings, record.id, "w1", requeued, store) is JobState.QUEUED
    back = read(client, record.id)
    assert back.state is JobState.QUEUED and back.attempts == 1
    assert requeued == [(record.id, queue_for("tiny"))]
    assert client.exists(KEYS.checkpoint(record.id)) and not client.exists(KEYS.lock(record.id))
    assert client.zscore(KEYS.queued(queue_for("tiny")), record.id) is not None

    # Another worker picks it up and finishes it from the checkpoint.
    assert run_job(client, settings, record.id, "w2", requeued, store) is JobState.SUCCEEDED
    assert read(client, record.id).iteration == 8


def test_orphaned_jobs_are_queued_again_once(
    client: fakeredis.FakeRedis, settings: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    from worker.liveness import reap_orphans

    alive = queue_job(client, state="running")
    dead = queue_job(client, state="running")
    done = queue_job(client, state="succeeded")
    client.sadd(KEYS.running(), alive.id, dead.id, done.id)
    client.set(KEYS.lock(alive.id), "w1", ex=30)

    assert reap_orphans(client, settings, requeued) == [dead.id]
    assert reap_orphans(client, settings, requeued) == []  # a second worker does not queue it twice
    assert requeued == [(dead.id, queue_for("tiny"))]
    assert not client.sismember(KEYS.running(), done.id)


# --- several jobs painted together (ARTGEN_BATCH_SIZE) ----------------------------------------------


def result_pixels(client: fakeredis.FakeRedis, job_id: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(KEYS.result(job_id)))), dtype=np.int16)


@pytest.fixture
def fp32(settings: Settings) -> Settings:
    # fp32: batched and solo runs then differ only in the last bits of batched kernels.
    return settings.model_copy(update={"engine_precision": "fp32", "batch_size": 4})


def test_compatible_queued_jobs_are_painted_together_and_equal_solo_runs(
    client: fakeredis.FakeRedis, fp32: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    params = [
        {"prompt": "a lighthouse at dusk", "seed": 1},
        {"prompt": "red:1|blue:-0.5", "seed": 2, "cutn": 6},
        {"prompt": "a quiet harbour", "seed": 3, "iterations": 5},
    ]
    together = [queue_job(client, **p) for p in params]
    assert run_job(client, fp32, together[0].id, "w1", requeued, store) is JobState.SUCCEEDED

    finals = [read(client, j.id) for j in together]
    assert [f.state for f in finals] == [JobState.SUCCEEDED] * 3
    assert [f.batch for f in finals] == [3, 3, 3] and {f.worker for f in finals} == {"w1"}
    assert [f.iteration for f in finals] == [8, 8, 5]
    assert client.zcard(KEYS.queued(queue_for("tiny"))) == 0 and client.scard(KEYS.running()) == 0
    for job in together:  # each job's own progress stream, in order, ending once
        stream = events(client, job.id)
        assert [d["iteration"] for k, d in stream if k == "progress"] == list(range(1, job.iterations + 1))
        assert [k for k, _ in stream].count("finished") == 1
        assert not client.exists(KEYS.lock(job.id)) and store.exists(result_key(job.id))

    # The same jobs, one at a time: the same pictures within 2/255 per pixel (fp32).
    alone = fp32.model_copy(update={"batch_size": 1})
    for job, p in zip(together, params, strict=True):
        solo = queue_job(client, **p)
        assert run_job(client, alone, solo.id, "w2", requeued, store) is JobState.SUCCEEDED
        assert read(client, solo.id).batch is None
        assert np.abs(result_pixels(client, solo.id) - result_pixels(client, job.id)).max() <= 2


def test_an_incompatible_job_at_the_front_keeps_its_place(
    client: fakeredis.FakeRedis, fp32: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    first = queue_job(client)
    other_size = queue_job(client, width=48, height=48)
    later = queue_job(client)
    assert run_job(client, fp32, first.id, "w1", requeued, store) is JobState.SUCCEEDED
    assert read(client, first.id).batch is None
    # The 48x48 job is next in line; the later 32x32 one did not jump ahead of it.
    assert read(client, other_size.id).state is JobState.QUEUED
    assert read(client, later.id).state is JobState.QUEUED
    queued = client.zrange(KEYS.queued(queue_for("tiny")), 0, -1)
    assert queued == [other_size.id.encode(), later.id.encode()]


def test_batch_size_one_paints_one_job_at_a_time(
    client: fakeredis.FakeRedis, fp32: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    first, second = queue_job(client), queue_job(client)
    alone = fp32.model_copy(update={"batch_size": 1})
    assert run_job(client, alone, first.id, "w1", requeued, store) is JobState.SUCCEEDED
    assert read(client, second.id).state is JobState.QUEUED


def test_a_canceled_job_leaves_the_batch_and_the_others_go_on(
    client: fakeredis.FakeRedis, fp32: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    kept, canceled_queued, canceled_running = queue_job(client), queue_job(client), queue_job(client)
    client.eval(CANCEL_IF_QUEUED, 1, KEYS.job(canceled_queued.id), time.time())
    client.set(KEYS.cancel(canceled_running.id), "1")  # the flag a running job's cancel sets
    assert run_job(client, fp32, kept.id, "w1", requeued, store) is JobState.SUCCEEDED
    assert read(client, kept.id).iteration == 8
    assert read(client, canceled_queued.id).started_at is None  # never claimed
    stopped = read(client, canceled_running.id)
    assert stopped.state is JobState.CANCELED and stopped.iteration < 8
    assert not store.exists(result_key(canceled_running.id))
    assert not client.exists(KEYS.lock(canceled_running.id))


def test_a_shutting_down_worker_hands_every_job_of_its_batch_back(
    client: fakeredis.FakeRedis, fp32: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    first, second = queue_job(client, iterations=2000), queue_job(client, iterations=2000)

    def shut_down_once_both_run() -> None:
        deadline = time.monotonic() + 60
        while read(client, second.id).state is not JobState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.005)
        client.set(KEYS.shutdown("w1"), "1")

    signal = threading.Thread(target=shut_down_once_both_run)
    signal.start()
    assert run_job(client, fp32, first.id, "w1", requeued, store) is JobState.QUEUED
    signal.join()
    assert sorted(requeued) == sorted([(first.id, queue_for("tiny")), (second.id, queue_for("tiny"))])
    for job in (first, second):
        back = read(client, job.id)
        assert back.state is JobState.QUEUED and back.batch == 2 and 0 < back.iteration < 2000
        assert client.exists(KEYS.checkpoint(job.id)) and not client.exists(KEYS.lock(job.id))
        assert client.zscore(KEYS.queued(queue_for("tiny")), job.id) is not None


def test_a_job_that_would_outlast_the_time_limit_does_not_join(
    client: fakeredis.FakeRedis, fp32: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    short = queue_job(client, iterations=6)
    long = queue_job(client, iterations=1000)
    hurried = fp32.model_copy(update={"soft_time_limit_s": 1, "hard_time_limit_s": 2})
    assert run_job(client, hurried, short.id, "w1", requeued, store) is JobState.SUCCEEDED
    # 1000 iterations at the batch's measured pace (>= 1 ms per step) need more than 0.9 s.
    assert read(client, long.id).state is JobState.QUEUED


# --- painting choices: schedules, per-prompt losses, plateau, optimisers and starts --------------------


def test_a_schedule_reports_its_stage_and_per_prompt_losses(
    client: fakeredis.FakeRedis, settings: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    record = queue_job(
        client,
        prompt="a seed ^ a sprout:2|rain:-0.5 ^ a tree",
        iterations=10,
        change_every=3,
        preview_every=5,
    )
    assert run_job(client, settings, record.id, "w1", requeued, store) is JobState.SUCCEEDED
    stream = events(client, record.id)
    progress = [data for kind, data in stream if kind == "progress"]
    assert [p["stage"]["index"] for p in progress] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert {p["stage"]["count"] for p in progress} == {3}
    assert progress[3]["stage"]["text"] == "a sprout:2|rain:-0.5"
    assert [(r["text"], r["weight"]) for r in progress[3]["losses"]] == [("a sprout", 2.0), ("rain", -0.5)]
    assert all(r["distance"] > 0 for p in progress for r in p["losses"])
    # A frame at iteration 1, every 5th, the last, and the last of each stage that another follows (3, 6).
    frames = [data["iteration"] for kind, data in stream if kind == "frame"]
    assert frames == [1, 3, 5, 6, 10]
    final = read(client, record.id)
    assert final.stage == 2 and final.losses is not None and [r.text for r in final.losses] == ["a tree"]
    assert final.stopped_at is None and final.iteration == 10


def test_a_plateau_ends_the_job_succeeded_early(
    client: fakeredis.FakeRedis, settings: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    record = queue_job(client, iterations=20, plateau_window=3, plateau_delta=100.0)
    assert run_job(client, settings, record.id, "w1", requeued, store) is JobState.SUCCEEDED
    final = read(client, record.id)
    assert final.stopped_at == 4 and final.iteration == 4 and final.iterations == 20
    assert [d["iteration"] for k, d in events(client, record.id) if k == "progress"] == [1, 2, 3, 4]
    assert Image.open(io.BytesIO(client.get(KEYS.result(record.id)))).text["iterations"] == "4"


def test_mixed_choices_share_a_batch_and_equal_solo_runs(
    client: fakeredis.FakeRedis, fp32: Settings, requeued: Requeued, store: DirectoryStore
) -> None:
    params = [
        {"prompt": "a fox ^ a dog", "seed": 1, "iterations": 6, "change_every": 2, "optimizer": "adamw"},
        {"prompt": "a red sky", "seed": 2, "iterations": 6, "optimizer": "nadam", "init": "gradient"},
        {"prompt": "a lake", "seed": 3, "iterations": 6, "plateau_window": 2, "plateau_delta": 100.0},
    ]
    together = [queue_job(client, **p) for p in params]
    assert run_job(client, fp32, together[0].id, "w1", requeued, store) is JobState.SUCCEEDED
    finals = [read(client, j.id) for j in together]
    assert [f.state for f in finals] == [JobState.SUCCEEDED] * 3 and [f.batch for f in finals] == [3, 3, 3]
    assert [f.iteration for f in finals] == [6, 6, 3] and finals[2].stopped_at == 3
    alone = fp32.model_copy(update={"batch_size": 1})
    for job, p in zip(together, params, strict=True):
        solo = queue_job(client, **p)
        assert run_job(client, alone, solo.id, "w2", requeued, store) is JobState.SUCCEEDED
        assert np.abs(result_pixels(client, solo.id) - result_pixels(client, job.id)).max() <= 2


@pytest.mark.parametrize("optimizer", ["adamw", "nadam"])
def test_a_resumed_job_keeps_its_optimizer_and_picture(
    client: fakeredis.FakeRedis, settings: Settings, requeued: Requeued, store: DirectoryStore, optimizer: str
) -> None:
    whole = queue_job(client, seed=5, optimizer=optimizer, init="gradient")
    run_job(client, settings, whole.id, "w1", requeued, store)
    # A job whose first worker died after iteration 4, its checkpoint (optimizer state included) saved.
    resumed = queue_job(
        client, seed=5, optimizer=optimizer, init="gradient", state="running", attempts=1, iteration=4
    )
    died_at_4(client, settings, resumed, optimizer=optimizer, init="gradient")
    assert run_job(client, settings, resumed.id, "w2", requeued, store) is JobState.SUCCEEDED
    assert read(client, resumed.id).resumed_from == 4
    same = [Image.open(io.BytesIO(client.get(KEYS.result(j.id)))).tobytes() for j in (whole, resumed)]
    assert same[0] == same[1]
