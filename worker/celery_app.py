"""The workers' Celery app: long GPU jobs, one at a time per process, models warm per process."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, signals

from shared.celeryconf import celery_config
from shared.jobs import TASK_GENERATE, JobRecord, queue_for
from shared.keys import Keys
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# How often a worker announces itself in Redis (`Keys.workers`); /readyz accepts 30 s of silence.
WORKER_HEARTBEAT_S = 10.0


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
    models = settings.worker_models or ([settings.model] if settings.model else [])
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


class _Heartbeat:
    """Writes this worker's liveness (and models) into Redis so /readyz can tell a worker is there."""

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self._name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="artgen-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.client().hdel(Keys(self._settings.redis_prefix).workers(), self._name)
        except Exception as exc:  # shutting down: Redis may already be gone; say so and move on
            log.warning("could not remove worker heartbeat: %s", exc)

    @property
    def name(self) -> str:
        return self._name

    def client(self) -> Any:
        return resilient_redis(self._settings.redis_url)

    def _run(self) -> None:
        client = self.client()
        key = Keys(self._settings.redis_prefix).workers()
        while not self._stop.is_set():
            try:
                reap_orphans(client, self._settings, _send_generate)
            except Exception as exc:  # Redis away: keep trying; the worker itself reconnects too
                log.warning("looking for orphaned jobs failed: %s", exc)
            value = json.dumps(
                {"ts": time.time(), "models": served_models(self._settings), "pid": os.getpid()}
            )
            try:
                client.hset(key, self._name, value)
            except Exception as exc:  # Redis away: keep trying; the worker itself reconnects too
                log.warning("worker heartbeat failed: %s", exc)
            # Reaping runs as often as a dead worker's lock can expire, at least every heartbeat.
            self._stop.wait(min(WORKER_HEARTBEAT_S, self._settings.lock_ttl_s / 2))


def reap_orphans(client: Any, settings: Settings, requeue: Callable[[str, str], None]) -> list[str]:
    """Queue again every running job whose worker died (its lock expired); returns their ids.

    Only one worker re-queues a given death (the `reaped` marker), and the job's lock keeps a second
    copy from running, so a job whose first message also comes back is still painted once.
    """
    keys = Keys(settings.redis_prefix)
    reaped = []
    for raw_id in client.smembers(keys.running()):
        job_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        if client.exists(keys.lock(job_id)):
            continue
        raw = client.hgetall(keys.job(job_id))
        if not raw or JobRecord.from_redis(raw).state.terminal:
            client.srem(keys.running(), job_id)
            continue
        if not client.set(keys.reaped(job_id), "1", nx=True, ex=settings.lock_ttl_s):
            continue
        record = JobRecord.from_redis(raw)
        log.warning("job %s lost its worker %s; queueing it again to resume", job_id, record.worker)
        requeue(job_id, queue_for(record.model))
        reaped.append(job_id)
    return reaped


def _send_generate(job_id: str, queue: str) -> None:
    app.send_task(TASK_GENERATE, args=[job_id], queue=queue)


_heartbeat: _Heartbeat | None = None


@signals.worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    name = getattr(sender, "hostname", None) or f"artgen@{socket.gethostname()}"
    _heartbeat = _Heartbeat(get_settings(), name)
    # A flag left by an earlier run of this worker name would hand back every job at once.
    _heartbeat.client().delete(Keys(get_settings().redis_prefix).shutdown(name))
    _heartbeat.start()


@signals.worker_shutting_down.connect
def _hand_back_jobs(**_: Any) -> None:
    """Ask this worker's running jobs to checkpoint and return to the queue, so shutdown is quick."""
    if _heartbeat is None:
        return
    settings = get_settings()
    try:
        _heartbeat.client().set(Keys(settings.redis_prefix).shutdown(_heartbeat.name), "1", ex=3600)
    except Exception as exc:  # Redis away: the jobs' locks expire and other workers take them over
        log.warning("could not ask running jobs to hand back: %s", exc)


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


@signals.worker_process_init.connect
def _warm_models(**_: Any) -> None:
    """Load every served model once in each pool process, before the first job arrives."""
    from worker.tasks import warm_up

    warm_up()
