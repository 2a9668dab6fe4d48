"""The workers' Celery app: long GPU jobs, one at a time per process, models warm per process."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from celery import Celery, signals

from shared.celeryconf import celery_config
from shared.jobs import queue_for
from shared.keys import Keys
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# How often a worker announces itself in Redis (`Keys.workers`); /readyz accepts 30 s of silence.
WORKER_HEARTBEAT_S = 10.0


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
            self._client().hdel(Keys(self._settings.redis_prefix).workers(), self._name)
        except Exception as exc:  # shutting down: Redis may already be gone; say so and move on
            log.warning("could not remove worker heartbeat: %s", exc)

    def _client(self) -> Any:
        import redis

        return redis.Redis.from_url(self._settings.redis_url, socket_timeout=5)

    def _run(self) -> None:
        client = self._client()
        key = Keys(self._settings.redis_prefix).workers()
        while not self._stop.is_set():
            value = json.dumps(
                {"ts": time.time(), "models": served_models(self._settings), "pid": os.getpid()}
            )
            try:
                client.hset(key, self._name, value)
            except Exception as exc:  # Redis away: keep trying; the worker itself reconnects too
                log.warning("worker heartbeat failed: %s", exc)
            self._stop.wait(WORKER_HEARTBEAT_S)


_heartbeat: _Heartbeat | None = None


@signals.worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    name = getattr(sender, "hostname", None) or f"artgen@{socket.gethostname()}"
    _heartbeat = _Heartbeat(get_settings(), name)
    _heartbeat.start()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


@signals.worker_process_init.connect
def _warm_models(**_: Any) -> None:
    """Load every served model once in each pool process, before the first job arrives."""
    from worker.tasks import warm_up

    warm_up()
