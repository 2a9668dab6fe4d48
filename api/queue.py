"""Handing a job to the workers: by task name, with the job id only (the record is in Redis)."""

from __future__ import annotations

import logging
from typing import Protocol

import anyio.to_thread
from celery import Celery

from shared.celeryconf import celery_config
from shared.jobs import TASK_GENERATE
from shared.settings import Settings

log = logging.getLogger(__name__)

# Bounded, so a request never hangs on a broker that is away; the job is then marked failed instead.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.5, "interval_max": 1.0}


class Enqueuer(Protocol):
    """Puts a job id on a queue; raises when the broker does not take it."""

    async def enqueue(self, job_id: str, queue: str) -> None: ...

    def close(self) -> None: ...


class CeleryEnqueuer:
    """A producer-only Celery app on the shared broker settings; it never imports worker code."""

    def __init__(self, settings: Settings) -> None:
        self._app = Celery("artgen-api", set_as_current=False)
        self._app.conf.update(celery_config(settings))

    async def enqueue(self, job_id: str, queue: str) -> None:
        # kombu publishes with blocking sockets: keep it off the event loop.
        await anyio.to_thread.run_sync(self._send, job_id, queue)

    def _send(self, job_id: str, queue: str) -> None:
        self._app.send_task(
            TASK_GENERATE,
            args=[job_id],
            queue=queue,
            task_id=job_id,
            retry=True,
            retry_policy=_PUBLISH_RETRY,
        )

    def close(self) -> None:
        self._app.close()
