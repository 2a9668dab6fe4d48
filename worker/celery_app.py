"""The workers' Celery app: long GPU jobs, one at a time per process, models warm per process.

This module builds the app and hooks the worker's own lifecycle (start, shutdown) to liveness and model
loading; the tasks live in `worker.tasks`, which Celery imports by name (`include`).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from celery import Celery, signals

from shared.celeryconf import celery_config
from shared.jobs import TASK_GENERATE, queue_for
from shared.settings import Settings, get_settings
from shared.webhooks import celery_notify
from worker.liveness import Heartbeat

log = logging.getLogger(__name__)


def resilient_redis(url: str) -> Any:
    """A Redis client whose commands retry with backoff for about half a minute before failing."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=20),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=10,
        socket_keepalive=True,
        socket_timeout=30,
    )


def served_models(settings: Settings) -> list[str]:
    """The models this worker takes jobs for; refusing to guess when none is configured."""
    models = settings.served_models
    if not models:
        raise RuntimeError("no model configured for this worker: set ARTGEN_MODEL (or ARTGEN_WORKER_MODELS)")
    return models


def make_celery(settings: Settings) -> Celery:
    app = Celery("artgen", set_as_current=True)
    app.conf.update(celery_config(settings))
    app.conf.task_default_queue = queue_for(settings.model or "default")
    app.conf.include = ["worker.tasks"]
    return app


# Celery's CLI and the task decorator need a module-level app; creating it opens no connection.
app = make_celery(get_settings())


def requeue(job_id: str, queue: str) -> None:
    """Put a job back on its model's queue: a new message for the same job id."""
    app.send_task(TASK_GENERATE, args=[job_id], queue=queue)


# Queues a webhook delivery for the torch-free webhooks worker: one broker message, never the HTTP call.
notify = celery_notify(app)


def load_served_models() -> None:
    """Load every model this worker serves, once per process, so the first job does not wait for it."""
    from worker.models import get_models

    settings = get_settings()
    for name in served_models(settings):
        log.info("loading model %s on %s", name, settings.device)
        get_models(name, settings.models_dir, settings.device)


# The worker's main process has one heartbeat, from `worker_ready` to `worker_shutdown`.
_heartbeat: Heartbeat | None = None


@signals.worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    settings = get_settings()
    name = getattr(sender, "hostname", None) or f"artgen@{socket.gethostname()}"
    client = resilient_redis(settings.redis_url)
    _heartbeat = Heartbeat(settings, name, served_models(settings), client, requeue, notify)
    _heartbeat.start()


@signals.worker_shutting_down.connect
def _hand_back_jobs(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.request_hand_back()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


@signals.worker_process_init.connect
def _warm_models(**_: Any) -> None:
    load_served_models()
