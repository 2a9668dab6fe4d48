"""Accepting a job: one path for `POST /v1/jobs` and the original API's aliases."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio.to_thread
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError

from api import idempotency
from api.metrics import Metrics
from api.queue import Enqueuer
from api.schemas import JobCreate
from api.store import JobStore
from api.uploads import UploadError, decode_base64, to_png
from api.urlguard import AllowList, RefusedUrl, check_webhook_url
from api.validation import invalid, job_params
from shared.jobs import CallerOptions, JobParams, JobRecord, queue_for
from shared.params import parse_duration
from shared.settings import Settings
from shared.webhooks import DEFAULT_WEBHOOK_EVENTS

log = logging.getLogger(__name__)

# Changes a request's checked parameters into the job's (`submit_job`'s `adjust`).
Adjust = Callable[[JobParams], JobParams]

# Seconds a client should wait before trying again when the queue is full or the broker is away.
RETRY_AFTER_S = 10


@dataclass
class Uploads:
    """Raw uploaded picture bytes, not yet checked."""

    init_image: bytes | None = None
    image_prompts: list[bytes] = field(default_factory=list)


def upload_problem(exc: UploadError, field_name: str) -> Exception:
    if exc.status == 413:
        return HTTPException(413, detail=str(exc))
    return RequestValidationError([{"loc": ("body", field_name), "msg": str(exc), "type": "value_error"}])


def base64_uploads(request: JobCreate, settings: Settings) -> Uploads:
    """Decode the base64 pictures of a JSON request (size checked before decoding)."""
    limit = settings.max_upload_bytes
    try:
        init = decode_base64(request.init_image, "init_image", limit) if request.init_image else None
    except UploadError as exc:
        raise upload_problem(exc, "init_image") from exc
    prompts = []
    for index, text in enumerate(request.image_prompts):
        try:
            prompts.append(decode_base64(text, f"image_prompts[{index}]", limit))
        except UploadError as exc:
            raise upload_problem(exc, "image_prompts") from exc
    return Uploads(init, prompts)


async def _checked_png(data: bytes, what: str, field_name: str, settings: Settings) -> bytes:
    try:
        # Decoding is CPU work: off the event loop, so pollers are not stalled by an upload.
        return await anyio.to_thread.run_sync(
            to_png, data, what, settings.max_upload_bytes, settings.max_upload_pixels
        )
    except UploadError as exc:
        raise upload_problem(exc, field_name) from exc


def _problem(where: tuple[str, ...], message: str) -> RequestValidationError:
    return invalid([{"loc": where, "msg": message, "type": "value_error"}])


async def caller_options(request: JobCreate, cancel_after: str | None, settings: Settings) -> CallerOptions:
    """The webhook (its URL checked: a 422 for anything but public http(s)), its events, and the deadline
    from `Cancel-After` or `deadline_s` (else `ARTGEN_DEFAULT_DEADLINE_S`)."""
    options = CallerOptions()
    if request.webhook is not None:
        if settings.webhook_secret is None:
            raise _problem(
                ("body", "webhook"), "this deployment sends no webhooks (ARTGEN_WEBHOOK_SECRET is unset)"
            )
        allow = AllowList.parse(settings.webhook_allow_hosts)
        try:
            # Resolving the host blocks: off the event loop.
            await anyio.to_thread.run_sync(check_webhook_url, request.webhook, allow)
        except RefusedUrl as exc:
            raise _problem(("body", "webhook"), str(exc)) from exc
        events = request.webhook_events_filter
        if events is not None and not events:
            raise _problem(("body", "webhook_events_filter"), "name at least one event, or leave it out")
        chosen = events if events is not None else list(DEFAULT_WEBHOOK_EVENTS)
        options.webhook = request.webhook
        options.webhook_events = ",".join(dict.fromkeys(chosen))
    elif request.webhook_events_filter is not None:
        raise _problem(("body", "webhook_events_filter"), "webhook_events_filter needs a webhook")
    seconds: float | None = request.deadline_s
    if cancel_after is not None:
        if seconds is not None:
            raise _problem(("header", "Cancel-After"), "give Cancel-After or deadline_s, not both")
        try:
            seconds = parse_duration(cancel_after)
        except ValueError as exc:
            raise _problem(("header", "Cancel-After"), str(exc)) from exc
    if seconds is None:
        seconds = settings.default_deadline_s
    if seconds is not None:
        options.deadline_at = time.time() + seconds
    return options


async def submit_job(
    request: JobCreate,
    uploads: Uploads,
    *,
    owner: str,
    settings: Settings,
    store: JobStore,
    enqueuer: Enqueuer,
    metrics: Metrics,
    options: CallerOptions | None = None,
    idempotency_value: str | None = None,
    adjust: Adjust | None = None,
) -> JobRecord:
    """Validate, store, enqueue; raises HTTPException/RequestValidationError for every refusal.

    `adjust` turns the checked parameters into the job's (an extension sets its parent and iterations).
    """
    params = job_params(
        request,
        settings,
        has_init_image=uploads.init_image is not None,
        image_prompt_count=len(uploads.image_prompts),
    )
    if adjust is not None:
        params = adjust(params)
    depth = await store.queue_depth(params.model)
    if depth >= settings.max_queue_depth:
        metrics.jobs_rejected.labels("queue_full").inc()
        raise HTTPException(
            429,
            detail=f"the queue for model {params.model} is full ({depth} jobs waiting); try again later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    init_png = (
        await _checked_png(uploads.init_image, "init_image", "init_image", settings)
        if uploads.init_image is not None
        else None
    )
    prompt_pngs = [
        await _checked_png(data, f"image_prompts[{i}]", "image_prompts", settings)
        for i, data in enumerate(uploads.image_prompts)
    ]
    record = await store.create(params, owner, init_png, prompt_pngs, options, idempotency_value)
    try:
        await enqueuer.enqueue(record.id, queue_for(record.model))
    except Exception as exc:  # any broker failure: the job must end visibly failed, not vanish
        log.warning("could not enqueue job %s: %s: %s", record.id, type(exc).__name__, exc)
        error = f"could not hand the job to the queue ({type(exc).__name__})"
        await store.fail_unqueued(record, error)
        metrics.jobs_rejected.labels("broker_unavailable").inc()
        raise HTTPException(
            503,
            detail=f"job {record.id} could not be queued: the broker is unavailable; try again later",
            headers={"Retry-After": str(RETRY_AFTER_S), "X-Job-Id": record.id},
        ) from exc
    metrics.jobs_submitted.labels(record.model).inc()
    log.info(
        "job %s queued (model %s, %dx%d, %d iterations)",
        record.id,
        record.model,
        record.width,
        record.height,
        record.iterations,
    )
    return record


async def submit_once(
    request: JobCreate,
    uploads: Uploads,
    *,
    owner: str,
    scope: str,
    settings: Settings,
    store: JobStore,
    enqueuer: Enqueuer,
    metrics: Metrics,
    options: CallerOptions,
    idempotency_key: str | None,
    fingerprint_of: tuple[object, ...],
    adjust: Adjust | None = None,
) -> tuple[JobRecord, bool]:
    """`submit_job` under an optional `Idempotency-Key`: the job, and whether it is an earlier request's.

    `fingerprint_of` is what makes two requests the same on this route (besides the pictures).
    """
    reservation = None
    if idempotency_key is not None:
        digests = [idempotency.digest(uploads.init_image), *map(idempotency.digest, uploads.image_prompts)]
        request_fingerprint = idempotency.fingerprint(*fingerprint_of, digests)
        reservation = await idempotency.reserve(store, scope, idempotency_key, request_fingerprint)
        if reservation.replay_of is not None:
            earlier = await store.record(reservation.replay_of)
            if earlier is not None:
                return earlier, True
        options.idempotency_key = reservation.redis_key
    try:
        record = await submit_job(
            request,
            uploads,
            owner=owner,
            settings=settings,
            store=store,
            enqueuer=enqueuer,
            metrics=metrics,
            options=options,
            idempotency_value=reservation.fingerprint if reservation is not None else None,
            adjust=adjust,
        )
    except BaseException:
        if reservation is not None:
            await idempotency.release(store, reservation)  # refused: the same request may come again
        raise
    return record, False
