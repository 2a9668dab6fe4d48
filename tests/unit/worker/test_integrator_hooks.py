"""What the worker does for the programs that call artgen: webhook events announced off the lifecycle
(never delivered here), deadlines, cancel reasons, and nothing left behind for a deleted job."""

from __future__ import annotations

import time
from pathlib import Path

import fakeredis
import pytest

from shared.deadlines import expire_deadlines
from shared.jobs import CallerOptions, CancelReason, JobState, queue_for
from shared.settings import Settings
from shared.storage import DirectoryStore, timelapse_key
from tests.unit.worker.test_runner import KEYS, Requeued, events, queue_job, read
from worker.lifecycle import WorkerContext, store_timelapse
from worker.progress import ProgressReporter
from worker.runner import run_job


class Announced(list[tuple[str, str, str]]):
    """Records the delivery tasks the worker queues (the broker's place): (job id, event, webhook id)."""

    def __call__(self, job_id: str, event: str, webhook_id: str) -> None:
        self.append((job_id, event, webhook_id))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        redis_prefix="unit", model="tiny", device="cpu", models_dir=tmp_path, preview_every=2, batch_size=1
    )


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "results")


def test_start_and_completed_are_announced_by_id_only(
    client: fakeredis.FakeRedis, settings: Settings, store: DirectoryStore
) -> None:
    record = queue_job(client, webhook="https://example.com/hook", webhook_events="start,completed")
    announced = Announced()
    assert run_job(client, settings, record.id, "w1", Requeued(), store, announced) is JobState.SUCCEEDED
    assert announced == [
        (record.id, "start", f"msg_{record.id}_start"),
        (record.id, "completed", f"msg_{record.id}_completed"),
    ]


def test_a_job_without_a_webhook_announces_nothing(
    client: fakeredis.FakeRedis, settings: Settings, store: DirectoryStore
) -> None:
    record = queue_job(client)
    announced = Announced()
    run_job(client, settings, record.id, "w1", Requeued(), store, announced)
    assert announced == []


def test_a_broker_that_refuses_a_notification_does_not_fail_the_job(
    client: fakeredis.FakeRedis, settings: Settings, store: DirectoryStore
) -> None:
    def refuse(*_: str) -> None:
        raise ConnectionRefusedError("broker away")

    record = queue_job(client, webhook="https://example.com/hook", webhook_events="start,completed")
    assert run_job(client, settings, record.id, "w1", Requeued(), store, refuse) is JobState.SUCCEEDED


def test_progress_is_throttled_to_one_per_interval(client: fakeredis.FakeRedis, settings: Settings) -> None:
    options = CallerOptions(webhook="https://example.com/hook", webhook_events="progress")
    record = queue_job(client, webhook=options.webhook, webhook_events=options.webhook_events)
    announced = Announced()
    slow = settings.model_copy(update={"webhook_progress_interval_s": 0.2})
    reporter = ProgressReporter(client, KEYS, record.id, slow, 1000, "w1", options=options, notify=announced)

    class Step:
        def __init__(self, iteration: int) -> None:
            self.iteration, self.total, self.loss, self.its = iteration, 100, 0.5, 10.0
            self.stage, self.stages, self.specs, self.losses = 0, 1, [], []
            self.stage_end = self.converged = False

        def image(self) -> None:
            raise AssertionError("no frame is due")

    started = time.monotonic()
    for iteration in range(2, 40):
        reporter(Step(iteration))  # type: ignore[arg-type]
        time.sleep(0.01)
    took = time.monotonic() - started
    reporter.frames.close()
    assert 1 <= len(announced) <= took / 0.2 + 1
    assert announced[0] == (record.id, "progress", f"msg_{record.id}_progress_2")
    assert all(event == "progress" for _, event, _ in announced)


def test_a_queued_job_past_its_deadline_never_starts(
    client: fakeredis.FakeRedis, settings: Settings, store: DirectoryStore
) -> None:
    record = queue_job(
        client, deadline_at=time.time() - 1, webhook="https://e.com/h", webhook_events="completed"
    )
    announced = Announced()
    assert run_job(client, settings, record.id, "w1", Requeued(), store, announced) is JobState.CANCELED
    final = read(client, record.id)
    assert final.cancel_reason is CancelReason.DEADLINE
    assert (final.started_at, final.attempts, final.iteration) == (None, 0, 0)
    assert not client.zscore(KEYS.queued(queue_for("tiny")), record.id)
    assert announced == [(record.id, "completed", f"msg_{record.id}_completed")]


def test_a_running_job_stops_at_the_iteration_after_its_deadline(
    client: fakeredis.FakeRedis, settings: Settings, store: DirectoryStore
) -> None:
    # The deadline passes during the first iterations: the job stops before doing all 500.
    record = queue_job(client, iterations=500, deadline_at=time.time() + 1.0)
    assert run_job(client, settings, record.id, "w1", Requeued(), store) is JobState.CANCELED
    final = read(client, record.id)
    assert final.cancel_reason is CancelReason.DEADLINE and 0 < final.iteration < 500
    progress_after = [e for e in events(client, record.id) if e[0] == "progress"]
    assert progress_after[-1][1]["iteration"] == final.iteration


def test_a_clients_cancel_says_client(
    client: fakeredis.FakeRedis, settings: Settings, store: DirectoryStore
) -> None:
    record = queue_job(client, deadline_at=time.time() + 3600)
    client.set(KEYS.cancel(record.id), "1")
    assert run_job(client, settings, record.id, "w1", Requeued(), store) is JobState.CANCELED
    assert read(client, record.id).cancel_reason is CancelReason.CLIENT


def test_the_sweep_cancels_queued_jobs_past_their_deadline_and_nothing_else(
    client: fakeredis.FakeRedis, settings: Settings
) -> None:
    now = time.time()
    due = queue_job(client, deadline_at=now - 1, webhook="https://e.com/h", webhook_events="completed")
    later = queue_job(client, deadline_at=now + 60)
    running = queue_job(client, deadline_at=now - 1)
    client.hset(KEYS.job(running.id), "state", "running")
    for job in (due, later, running):
        assert job.deadline_at is not None
        client.zadd(KEYS.deadlines(), {job.id: job.deadline_at})
    announced = Announced()
    assert expire_deadlines(client, settings, announced, now) == [due.id]
    assert read(client, due.id).state is JobState.CANCELED
    assert read(client, due.id).cancel_reason is CancelReason.DEADLINE
    assert read(client, later.id).state is JobState.QUEUED
    assert read(client, running.id).state is JobState.RUNNING  # it stops itself, within an iteration
    assert client.zscore(KEYS.deadlines(), due.id) is None  # off the watch, by the end facts
    assert announced == [(due.id, "completed", f"msg_{due.id}_completed")]
    assert expire_deadlines(client, settings, announced, now) == []


def test_a_time_lapse_stored_after_delete_is_removed_by_its_writer(
    client: fakeredis.FakeRedis, settings: Settings, store: DirectoryStore
) -> None:
    from tests.unit.api.support import png_bytes

    ctx = WorkerContext(client, settings, "w1", Requeued(), store)
    client.rpush(KEYS.frames("gone"), png_bytes(), png_bytes(color=(0, 0, 200)))
    store_timelapse(ctx, "gone")  # no record: deleted meanwhile
    assert not store.exists(timelapse_key("gone"))
    assert not client.exists(KEYS.timelapse("gone"))
