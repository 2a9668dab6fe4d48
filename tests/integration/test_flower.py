"""`artgen flower` as compose runs it, against the real stack: it lists the worker and a finished job over
its HTTP API with credentials, and answers 401 without them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from celery import Celery

from launch.processes import free_port
from shared.celeryconf import celery_config
from shared.jobs import TASK_GENERATE, JobRecord, JobState, queue_for
from shared.keys import Keys
from shared.settings import Settings
from tests.integration.conftest import Proc, Stack, wait_for

USER = "ops"
PASSWORD = "flower-test-password-0123"
AUTH = (USER, PASSWORD)
WORKER_NAME = "shared@test"  # the session worker's --hostname (conftest's `worker` fixture)


@pytest.fixture(scope="module")
def flower_url(stack: Stack, worker: Proc) -> Iterator[str]:
    """`artgen flower` with credentials, on a free port; ready once its event stream sees the worker."""
    port = free_port()
    proc = stack.spawn(
        f"flower-{port}", ["flower", "--port", str(port)], flower_user=USER, flower_password=PASSWORD
    )
    url = f"http://127.0.0.1:{port}"

    def alive_in_flower() -> bool:
        if not proc.alive():
            raise RuntimeError(f"flower exited at start:\n{proc.log_tail()}")
        try:
            reply = httpx.get(f"{url}/api/workers", params={"status": "1"}, auth=AUTH, timeout=5)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and reply.json().get(WORKER_NAME) is True

    try:
        wait_for(alive_in_flower, 60, "Flower to see the worker's heartbeats", interval_s=0.25)
        yield url
    finally:
        proc.stop()


def _run_one_job(stack: Stack) -> str:
    """Write a job record and enqueue it by task name, as the API does; returns the job id."""
    settings = Settings(redis_url=stack.redis.url, redis_prefix=stack.prefix)
    keys = Keys(stack.prefix)
    record = JobRecord(
        id=str(uuid.uuid4()),
        prompt="a lighthouse seen by Flower",
        model="tiny",
        width=32,
        height=32,
        iterations=4,
        seed=7,
        cutn=2,
        preview_every=2,
    )
    stack.client.hset(keys.job(record.id), mapping=record.to_redis())
    stack.client.zadd(keys.queued(queue_for("tiny")), {record.id: record.created_at})
    producer = Celery("flower-test", set_as_current=False)
    producer.conf.update(celery_config(settings))
    try:
        producer.send_task(TASK_GENERATE, args=[record.id], queue=queue_for("tiny"), task_id=record.id)
    finally:
        producer.close()

    def finished() -> bool:
        state = JobRecord.from_redis(stack.client.hgetall(keys.job(record.id))).state
        return state.terminal

    wait_for(finished, 120, f"job {record.id} to finish", interval_s=0.1)
    assert JobRecord.from_redis(stack.client.hgetall(keys.job(record.id))).state is JobState.SUCCEEDED
    return record.id


def test_flower_lists_the_worker_and_the_finished_job(stack: Stack, flower_url: str) -> None:
    job_id = _run_one_job(stack)

    def inspected() -> dict[str, Any] | None:
        # refresh=1 makes Flower inspect the workers; a busy worker may miss its 1 s reply window once.
        workers = httpx.get(f"{flower_url}/api/workers", params={"refresh": "1"}, auth=AUTH, timeout=30)
        assert workers.status_code == 200
        info: dict[str, Any] | None = workers.json().get(WORKER_NAME)
        return info if info and "active_queues" in info else None

    info = wait_for(inspected, 30, "Flower's inspect reply from the worker", interval_s=0.5)
    # The inspect reply shows the queue this worker serves.
    assert queue_for("tiny") in {queue["name"] for queue in info["active_queues"]}

    def task_succeeded() -> dict[str, Any] | None:
        reply = httpx.get(f"{flower_url}/api/tasks", auth=AUTH, timeout=10)
        assert reply.status_code == 200
        task: dict[str, Any] | None = reply.json().get(job_id)
        return task if task and task.get("state") == "SUCCESS" else None

    task = wait_for(task_succeeded, 30, "Flower to record the task's success", interval_s=0.25)
    assert task["name"] == TASK_GENERATE
    assert task["worker"] == WORKER_NAME
    assert task["args"] == repr([job_id]) and task["runtime"] > 0

    one = httpx.get(f"{flower_url}/api/task/info/{job_id}", auth=AUTH, timeout=10)
    assert one.status_code == 200 and one.json()["state"] == "SUCCESS"


@pytest.mark.parametrize("path", ["/api/workers", "/api/tasks", f"/api/task/info/{uuid.uuid4()}", "/"])
@pytest.mark.parametrize("auth", [None, (USER, "wrong-password-0000"), ("someone", PASSWORD)])
def test_flower_refuses_without_the_right_credentials(
    flower_url: str, path: str, auth: tuple[str, str] | None
) -> None:
    reply = httpx.get(f"{flower_url}{path}", auth=auth, timeout=10)
    assert reply.status_code == 401
    assert "lighthouse" not in reply.text
