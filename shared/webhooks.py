"""Webhook facts both sides share: the events, their ids, which a job wants, the task that delivers them.

A job's events are announced by whichever side makes them happen (the worker's lifecycle for start,
progress and most ends; the API for ends it makes itself) by sending the delivery task by name to its own
queue, where a torch-free `artgen webhooks` worker delivers it. Announcing is cheap and never blocks on
the receiver.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Literal

from shared.celeryconf import PUBLISH_RETRY
from shared.jobs import CallerOptions

log = logging.getLogger(__name__)

TASK_DELIVER_WEBHOOK = "artgen.deliver_webhook"
WEBHOOK_QUEUE = "artgen.webhooks"


class WebhookEvent(StrEnum):
    START = "start"  # a worker started (or resumed) the job
    PROGRESS = "progress"  # an iteration; at most one per ARTGEN_WEBHOOK_PROGRESS_INTERVAL_S
    COMPLETED = "completed"  # any final state: succeeded, failed or canceled


WebhookEventName = Literal["start", "progress", "completed"]  # WebhookEvent's values, for request schemas
WEBHOOK_EVENTS = tuple(event.value for event in WebhookEvent)
DEFAULT_WEBHOOK_EVENTS = (WebhookEvent.START.value, WebhookEvent.COMPLETED.value)

# (job id, event, webhook id) -> the delivery task is on its queue; raises when the broker refuses it.
Notify = Callable[[str, str, str], None]


def webhook_id(job_id: str, event: WebhookEvent, seq: int | None = None) -> str:
    """The event's id, the same on every attempt and every announcement (a resumed job's second "start"
    is the same event), so receivers and the delivery record can tell repeats apart."""
    suffix = f"_{seq}" if seq is not None else ""
    return f"msg_{job_id}_{event.value}{suffix}"


def wants(options: CallerOptions, event: WebhookEvent) -> bool:
    """Whether the job has a webhook that asked for this event."""
    return bool(options.webhook) and event.value in options.webhook_event_list


def retry_delay(base_s: float, attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: base, 3x base, 9x base... (5 s base: 6 attempts in ~10 min)."""
    return float(base_s * 3 ** (attempt - 1))


def announce(
    notify: Notify | None, job_id: str, options: CallerOptions, event: WebhookEvent, seq: int | None = None
) -> None:
    """Queue the event's delivery if the job wants it; a broker that refuses is logged, never raised, so
    a notification can never fail the job itself."""
    if notify is None or not wants(options, event):
        return
    try:
        notify(job_id, event.value, webhook_id(job_id, event, seq))
    except Exception as exc:  # the job goes on; the missing delivery shows in GET .../deliveries
        log.warning(
            "could not queue the %s webhook of job %s: %s: %s", event.value, job_id, type(exc).__name__, exc
        )


def celery_notify(app: Any) -> Notify:
    """A `Notify` that sends the delivery task by name on `app` (the API's producer or a worker's app)."""

    def notify(job_id: str, event: str, event_webhook_id: str) -> None:
        app.send_task(
            TASK_DELIVER_WEBHOOK,
            kwargs={"job_id": job_id, "event": event, "webhook_id": event_webhook_id},
            queue=WEBHOOK_QUEUE,
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )

    return notify
