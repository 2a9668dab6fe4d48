"""Handing a job to the workers: by task name, with the job id only (the record is in Redis)."""

from __future__ import annotations

import logging
from typing import Protocol

import anyio.to_thread
from celery import Celery

from shared.celeryconf import PUBLISH_RETRY, celery_config
from shared.jobs import TASK_GENERATE
from shared.settings import Settings
from shared.webhooks import celery_notify

log = logging.getLogger(__name__)


class Enqueuer(Protocol):
    """Puts a job id on a queue; raises when the broker does not take it."""

    async def enqueue(self, job_id: str, queue: str) -> None: ...

    def notify(self, job_id: str, event: str, webhook_id: str) -> None:
        """Queue a webhook delivery (blocking; `shared.webhooks.Notify`)."""

    def close(self) -> None: ...


class CeleryEnqueuer:
    """A producer-only Celery app on the shared broker settings; it never imports worker code."""

    def __init__(self, settings: Settings) -> None:
        self._app = Celery("artgen-api", set_as_current=False)
        self._app.conf.update(celery_config(settings))
        self._notify = celery_notify(self._app)

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
            retry_policy=PUBLISH_RETRY,
        )

    def notify(self, job_id: str, event: str, webhook_id: str) -> None:
        self._notify(job_id, event, webhook_id)

    def close(self) -> None:
        self._app.close()
