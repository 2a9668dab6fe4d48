"""Celery tasks: thin wrappers that hand a job id to `worker.runner.run_job`."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis

from shared.jobs import TASK_GENERATE
from shared.settings import get_settings
from shared.storage import ResultStore, make_store
from worker.celery_app import app, notify, requeue, resilient_redis
from worker.runner import run_job


@lru_cache
def _redis() -> redis.Redis:
    """One connection pool per worker process, retrying long enough to ride out a Redis restart."""
    return resilient_redis(get_settings().redis_url)


@lru_cache
def _store() -> ResultStore:
    """Where finished pictures and time-lapses are kept beyond Redis (a directory or a bucket)."""
    return make_store(get_settings())


@app.task(name=TASK_GENERATE, bind=True)
def generate_image(self: Any, job_id: str) -> str | None:
    """Paint one job; the job record, not Celery's result, carries the outcome."""
    worker = self.request.hostname or "worker"
    state = run_job(_redis(), get_settings(), job_id, worker, requeue, _store(), notify)
    return state.value if state is not None else None
