"""The facts written when a job ends, by whichever side ends it: the API (a job canceled or refused
while queued) or a worker (every other end).

Everything that reacts to an end reads these facts: the `finished` event drives SSE and the blocking
aliases, the stats hash drives `/metrics`. Writing them in one function keeps every end alike. Once the
facts are written, the side that ended the job announces its "completed" webhook (`announce_finished`).
"""

from __future__ import annotations

import json
from typing import Any

from shared.jobs import EVENTS_MAXLEN, EventType, JobRecord, JobState, queue_for
from shared.keys import Keys
from shared.stats import record_finished
from shared.webhooks import Notify, WebhookEvent, announce


def write_finished(
    pipe: Any,
    keys: Keys,
    record: JobRecord,
    state: JobState,
    error: str | None,
    finished_at: float,
    ttl_s: int,
    *,
    bytes_ttl_s: int,
) -> None:
    """Queue a job's end on `pipe` (sync or asyncio): its `finished` event, its stats, and every key's TTL.

    `record` is the job as it stood before it ended; `finished_at` is the time the state changed. The
    record, events and cancel flag keep `ttl_s`; pictures and other bulk bytes get `bytes_ttl_s`
    (`Settings.finished_bytes_ttl_s`), since the result store holds what clients download after that.
    """
    started = record.started_at
    run_s = finished_at - started if started else None
    wait_s = (started if started else finished_at) - record.created_at
    record_finished(pipe, keys.stats(), record.model, state.value, run_s, wait_s, record.iteration)
    pipe.xadd(
        keys.events(record.id),
        {"event": EventType.FINISHED.value, "data": json.dumps({"state": state.value, "error": error})},
        maxlen=EVENTS_MAXLEN,
        approximate=True,
    )
    # Off the queue and the deadline watch, whoever ended it.
    pipe.zrem(keys.queued(queue_for(record.model)), record.id)
    pipe.zrem(keys.deadlines(), record.id)
    for key in keys.kept_for_job(record.id):
        pipe.expire(key, ttl_s)
    for key in keys.bytes_for_job(record.id, record.image_prompt_count):
        pipe.expire(key, min(bytes_ttl_s, ttl_s))


def announce_finished(notify: Notify | None, record: JobRecord) -> None:
    """After `write_finished`'s pipeline ran: queue the job's "completed" webhook, if it wants one."""
    announce(notify, record.id, record, WebhookEvent.COMPLETED)
