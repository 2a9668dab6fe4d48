"""Deadlines (`Cancel-After`, `deadline_s`): queued jobs whose deadline passed are canceled.

A running job watches its own deadline every iteration (worker.progress), and a worker never starts a
job past it (worker.lifecycle.claim). This sweep ends the ones still queued at their deadline even while
no worker is free to look at them, so their state and their "completed" webhook come on time. The GPU
workers' heartbeat and the webhooks worker run it; the API also cancels one it reads past its deadline.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.finished import announce_finished, write_finished
from shared.jobs import CancelReason, JobRecord, JobState
from shared.keys import Keys
from shared.settings import Settings
from shared.transitions import CANCEL_IF_QUEUED
from shared.webhooks import Notify

log = logging.getLogger(__name__)


def past_deadline(record: JobRecord, now: float) -> bool:
    return record.deadline_at is not None and now >= record.deadline_at and not record.state.terminal


def expire_deadlines(
    client: Any, settings: Settings, notify: Notify | None, now: float | None = None
) -> list[str]:
    """Cancel (reason "deadline") every queued job whose deadline has passed; their ids."""
    keys = Keys(settings.redis_prefix)
    now = time.time() if now is None else now
    ended = []
    for raw_id in client.zrangebyscore(keys.deadlines(), "-inf", now):
        job_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        raw = client.hgetall(keys.job(job_id))
        if not raw:
            client.zrem(keys.deadlines(), job_id)
            continue
        record = JobRecord.from_redis(raw)
        if record.state is not JobState.QUEUED:
            # Running: it stops itself at its next iteration; ended: write_finished took it off already.
            continue
        if not client.eval(CANCEL_IF_QUEUED, 1, keys.job(job_id), now, CancelReason.DEADLINE.value):
            continue  # a worker took it this moment; it sees the deadline at its first iteration
        pipe = client.pipeline(transaction=True)
        write_finished(
            pipe,
            keys,
            record,
            JobState.CANCELED,
            None,
            now,
            settings.job_ttl_s,
            bytes_ttl_s=settings.finished_bytes_ttl_s,
        )
        pipe.execute()
        announce_finished(notify, record)
        log.info("job %s canceled: its deadline passed while it was queued", job_id)
        ended.append(job_id)
    return ended
