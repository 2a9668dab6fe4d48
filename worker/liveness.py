"""Worker liveness in Redis: a heartbeat that says this worker is alive, the reaper that queues again
the jobs of workers that died, and the sweep that cancels queued jobs past their deadline.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from shared.deadlines import expire_deadlines
from shared.jobs import JobRecord, queue_for
from shared.keys import Keys
from shared.settings import Settings
from shared.webhooks import Notify

log = logging.getLogger(__name__)

# How often a worker announces itself in Redis (`Keys.workers`); /readyz accepts 30 s of silence.
WORKER_HEARTBEAT_S = 10.0


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


class Heartbeat:
    """A thread that writes this worker's liveness (and models) into Redis, so /readyz can tell a worker
    is there, and reaps orphaned jobs as often as a dead worker's lock can expire."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        models: list[str],
        client: Any,
        requeue: Callable[[str, str], None],
        notify: Notify | None = None,
    ) -> None:
        self.name = name
        self._settings, self._models, self._client, self._requeue = settings, models, client, requeue
        self._notify = notify
        self._keys = Keys(settings.redis_prefix)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="artgen-heartbeat", daemon=True)

    def start(self) -> None:
        # A flag left by an earlier run of this worker name would hand back every job at once.
        self._client.delete(self._keys.shutdown(self.name))
        self._thread.start()

    def request_hand_back(self) -> None:
        """Ask this worker's running jobs to checkpoint and return to the queue, so shutdown is quick."""
        try:
            self._client.set(self._keys.shutdown(self.name), "1", ex=3600)
        except Exception as exc:  # Redis away: the jobs' locks expire and other workers take them over
            log.warning("could not ask running jobs to hand back: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        try:
            self._client.hdel(self._keys.workers(), self.name)
        except Exception as exc:  # shutting down: Redis may already be gone; say so and move on
            log.warning("could not remove worker heartbeat: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reap_orphans(self._client, self._settings, self._requeue)
            except Exception as exc:  # Redis away: keep trying; the worker itself reconnects too
                log.warning("looking for orphaned jobs failed: %s", exc)
            try:
                expire_deadlines(self._client, self._settings, self._notify)
            except Exception as exc:  # Redis away: keep trying; the worker itself reconnects too
                log.warning("looking for queued jobs past their deadline failed: %s", exc)
            value = json.dumps({"ts": time.time(), "models": self._models, "pid": os.getpid()})
            try:
                self._client.hset(self._keys.workers(), self.name, value)
            except Exception as exc:  # Redis away: keep trying; the worker itself reconnects too
                log.warning("worker heartbeat failed: %s", exc)
            # Reaping runs as often as a dead worker's lock can expire, at least every heartbeat.
            self._stop.wait(min(WORKER_HEARTBEAT_S, self._settings.lock_ttl_s / 2))
