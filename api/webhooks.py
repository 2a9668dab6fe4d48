"""Webhook delivery: the torch-free Celery worker behind `artgen webhooks`, on a queue of its own.

The GPU workers and the API only queue `artgen.deliver_webhook` (job id, event, webhook id); this worker
builds the body (the job view, as `GET /v1/jobs/{id}` answers it, kept from the first attempt so every
retry sends the same bytes), signs it by the Standard Webhooks spec with `ARTGEN_WEBHOOK_SECRET`, checks
the receiver's addresses again (`api.urlguard`) and POSTs to the checked address: no redirects,
connect and read timeouts, at most 64 kB of the answer read. A failed attempt is retried with
exponential backoff under the same `webhook-id`; every attempt is recorded for
`GET /v1/jobs/{id}/deliveries` and counted by outcome for `/metrics`.

The same process runs the periodic chores that need no GPU: canceling queued jobs past their deadline,
and sweeping results older than `ARTGEN_RESULT_TTL_S` from the directory store.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any
from urllib.parse import SplitResult

import redis
from celery import Celery, signals
from standardwebhooks import Webhook

from api.store import view_of
from api.urlguard import AllowList, IPAddress, RefusedUrl, resolve, split_url
from shared.celeryconf import celery_config
from shared.deadlines import expire_deadlines
from shared.jobs import JobRecord
from shared.keys import Keys
from shared.settings import Settings, get_settings
from shared.stats import webhook_field
from shared.storage import STATE_FILE, DirectoryStore, make_store
from shared.transitions import RECORD_WEBHOOK_ATTEMPT, START_WEBHOOK_ATTEMPT
from shared.webhooks import TASK_DELIVER_WEBHOOK, WEBHOOK_QUEUE, celery_notify, retry_delay

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "artgen-webhooks/1"
# Attempts kept per job in the deliveries list (a job with progress webhooks makes many).
MAX_ATTEMPTS_KEPT = 500
# How often the chores run (deadlines; the result sweep runs at most every `_sweep_every`).
CHORES_EVERY_S = 5.0


@dataclass(frozen=True)
class Attempt:
    """What one POST came to."""

    status_code: int | None
    error: str | None
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class Deliverer:
    """Delivers webhook events of jobs in one Redis (a plain object: the Celery task only wraps it)."""

    client: Any
    settings: Settings
    post: Any = field(default=None)  # (parts, addresses, body, headers, timeout) -> Attempt; tests swap it

    @cached_property
    def keys(self) -> Keys:
        return Keys(self.settings.redis_prefix)

    @cached_property
    def allow(self) -> AllowList:
        return AllowList.parse(self.settings.webhook_allow_hosts)

    @cached_property
    def signer(self) -> Webhook | None:
        secret = self.settings.webhook_secret
        return Webhook(secret.get_secret_value()) if secret is not None else None

    def deliver(
        self, job_id: str, event: str, webhook_id: str, task_id: str, worker: str = "webhooks"
    ) -> float | None:
        """Make one attempt of one event; seconds until the next attempt, or None when done with it."""
        keys, settings = self.keys, self.settings
        raw = self.client.hgetall(keys.job(job_id))
        if not raw:
            self._count("dropped")
            log.info("webhook %s dropped: job %s is gone", webhook_id, job_id)
            return None
        record = JobRecord.from_redis(raw)
        body = view_of(record, None).model_dump_json(by_alias=True)
        attempt, kept_body, _ = self.client.eval(
            START_WEBHOOK_ATTEMPT, 2, keys.job(job_id), keys.webhooks(job_id), webhook_id, task_id, body,
            settings.job_ttl_s,
        )  # fmt: skip
        if int(attempt) <= 0:
            if int(attempt) < 0:
                self._count("dropped")
            return None  # gone, already delivered or given up, or another announcement's task owns it
        attempt = int(attempt)
        body = kept_body.decode() if isinstance(kept_body, bytes) else str(kept_body)
        started = time.time()
        if record.webhook is None or self.signer is None:
            result = Attempt(None, "webhooks are off: ARTGEN_WEBHOOK_SECRET is not set", 0.0)
            outcome = "failed"
        else:
            try:
                parts = split_url(record.webhook)
                addresses = resolve(parts, self.allow)
            except RefusedUrl as exc:
                result, outcome = Attempt(None, f"refused: {exc}", 0.0), "refused"
            else:
                result = (self.post or post_webhook)(
                    parts,
                    addresses,
                    body.encode(),
                    self._headers(webhook_id, body),
                    settings.webhook_timeout_s,
                )
                last = attempt >= settings.webhook_max_attempts
                outcome = "delivered" if result.ok else ("failed" if last else "retrying")
        status = {"delivered": "delivered", "retrying": ""}.get(outcome, "failed")
        entry = {
            "webhook_id": webhook_id,
            "event": event,
            "attempt": attempt,
            "at": started,
            "duration_s": round(result.duration_s, 4),
            "outcome": outcome,
            "status_code": result.status_code,
            "error": result.error,
            "worker": worker,
        }
        recorded = self.client.eval(
            RECORD_WEBHOOK_ATTEMPT, 4, keys.job(job_id), keys.webhooks(job_id), keys.deliveries(job_id),
            keys.stats(), webhook_id, json.dumps(entry), status, settings.job_ttl_s,
            webhook_field(outcome),
        )  # fmt: skip
        if int(recorded) > 0:
            self.client.ltrim(keys.deliveries(job_id), -MAX_ATTEMPTS_KEPT, -1)
        log.info(
            "webhook %s (%s) attempt %d: %s%s",
            webhook_id,
            event,
            attempt,
            outcome,
            f" ({result.error})" if result.error else f" (HTTP {result.status_code})",
        )
        if outcome == "retrying" and int(recorded) > 0:
            return retry_delay(settings.webhook_retry_base_s, attempt)
        return None

    def _headers(self, webhook_id: str, body: str) -> dict[str, str]:
        assert self.signer is not None
        # Signed anew on every attempt: receivers refuse timestamps older than about five minutes.
        now = datetime.fromtimestamp(int(time.time()), tz=UTC)
        return {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(webhook_id, now, body),
        }

    def _count(self, outcome: str) -> None:
        self.client.hincrby(self.keys.stats(), webhook_field(outcome), 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand, with the URL's host for SNI and certificate checks."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to an address checked beforehand (never a second DNS lookup), with the URL's Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def post_webhook(
    parts: SplitResult, addresses: list[IPAddress], body: bytes, headers: dict[str, str], timeout_s: float
) -> Attempt:
    """POST `body` to the first address that connects; never follows a redirect, reads at most 64 kB."""
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    kind = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    started = time.monotonic()
    error = "no address to connect to"
    for address in addresses:
        connection = kind(host, port, str(address), timeout_s)
        try:
            connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            status = response.status
            if 300 <= status < 400:
                return Attempt(
                    status, f"HTTP {status}: redirects are not followed", time.monotonic() - started
                )
            return Attempt(
                status, None if 200 <= status < 300 else f"HTTP {status}", time.monotonic() - started
            )
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, TimeoutError | socket.timeout):
                error = f"timed out after {timeout_s:g} s"
        finally:
            connection.close()
    return Attempt(None, error, time.monotonic() - started)


class Chores:
    """A thread of the webhooks worker: queued jobs past their deadline, and old results swept."""

    def __init__(self, settings: Settings, client: Any, notify: Any) -> None:
        self._settings, self._client, self._notify = settings, client, notify
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="artgen-chores", daemon=True)
        self._swept: float | None = None  # time.monotonic() of the last sweep

    @property
    def _sweep_every(self) -> float:
        settings = self._settings
        ttl = min(settings.result_ttl_s or settings.state_ttl_s, settings.state_ttl_s)
        return min(600.0, max(1.0, ttl / 10))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> None:
        try:
            expire_deadlines(self._client, self._settings, self._notify)
        except Exception as exc:  # Redis away: the next round tries again
            log.warning("looking for queued jobs past their deadline failed: %s", exc)
        now = time.monotonic()
        if self._swept is not None and now - self._swept < self._sweep_every:
            return
        self._swept = now
        try:
            sweep_results(self._settings, self._client)
        except Exception as exc:  # the disk or Redis away: the next round tries again
            log.warning("sweeping old results failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(min(CHORES_EVERY_S, self._sweep_every))


def sweep_results(settings: Settings, client: Any, now: float | None = None) -> int:
    """Remove results older than `ARTGEN_RESULT_TTL_S`, and kept painting states older than
    `ARTGEN_STATE_TTL_S`, from the directory store (one sweeper at a time; an S3 bucket expires them with
    its own lifecycle rule, README "Retention"); how many files."""
    store = make_store(settings)
    if not isinstance(store, DirectoryStore):
        return 0
    keys = Keys(settings.redis_prefix)
    if not client.set(keys.sweep_lock(), "1", nx=True, ex=60):
        return 0
    now = time.time() if now is None else now
    try:
        removed = store.sweep(settings.state_ttl_s, now, name=STATE_FILE)
        if settings.result_ttl_s is not None:
            removed += store.sweep(settings.result_ttl_s, now)
    finally:
        client.delete(keys.sweep_lock())
    if removed:
        log.info("swept %d stored file(s) past their retention", removed)
    return removed


def make_webhooks_celery(settings: Settings) -> Celery:
    app = Celery("artgen-webhooks", set_as_current=False)
    app.conf.update(celery_config(settings))
    # A delivery waits on the network, never on a GPU: bounded by its timeouts, not by the job limits.
    limit = int(settings.webhook_timeout_s * 3) + 30
    app.conf.update(
        task_default_queue=WEBHOOK_QUEUE,
        task_soft_time_limit=limit,
        task_time_limit=limit + 10,
        include=["api.webhooks"],
    )
    return app


# Celery's CLI, the healthcheck and the task decorator need a module-level app; it opens no connection.
app = make_webhooks_celery(get_settings())


@lru_cache
def _deliverer() -> Deliverer:
    settings = get_settings()
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=10, health_check_interval=10, retry_on_timeout=True
    )
    return Deliverer(client, settings)


@app.task(name=TASK_DELIVER_WEBHOOK, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
def deliver_webhook(self: Any, job_id: str, event: str, webhook_id: str) -> None:
    """One attempt; a failed one comes back as a retry of this same task (same id, same webhook-id)."""
    request = self.request
    delay = _deliverer().deliver(
        job_id, event, webhook_id, request.id or webhook_id, request.hostname or "webhooks"
    )
    if delay is not None:
        raise self.retry(countdown=delay, max_retries=None)


_chores: Chores | None = None


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _start_chores(sender: Any = None, **_: Any) -> None:
    global _chores
    if getattr(sender, "app", None) is not app:
        return  # a GPU worker in the same interpreter (tests): not ours
    settings = get_settings()
    if settings.webhook_secret is None:
        log.warning(
            "ARTGEN_WEBHOOK_SECRET is not set: the API refuses webhooks; deadlines and sweeps still run"
        )
    _chores = Chores(settings, _deliverer().client, celery_notify(app))
    _chores.start()


@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_chores(sender: Any = None, **_: Any) -> None:
    if _chores is not None and getattr(sender, "app", None) is app:
        _chores.stop()
