"""Celery settings shared by the API (a producer only) and the workers, built from `Settings`."""

from __future__ import annotations

from typing import Any

from shared.settings import Settings

# Publishing retries, bounded so a request or a painting step never hangs on a broker that is away.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.5, "interval_max": 1.0}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Configuration for long GPU jobs: one at a time per process, acknowledged only when done."""
    transport = {
        # Above the hard time limit, so a job still running is never handed to a second worker.
        "visibility_timeout": settings.visibility_timeout_s,
        # Reconnect instead of failing while Redis restarts.
        "retry_on_timeout": True,
        "socket_keepalive": True,
        "health_check_interval": 10,
    }
    return {
        "broker_url": settings.celery_broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Results live in the job record, not in Celery's result backend.
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Acknowledge after the job ends, and requeue when the worker process dies mid-job.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency,
        "task_soft_time_limit": settings.soft_time_limit_s,
        "task_time_limit": settings.hard_time_limit_s,
        # Flower needs task events.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "worker_hijack_root_logger": False,
    }
