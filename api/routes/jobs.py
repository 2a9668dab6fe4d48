"""The canonical job resource: create, read, frame, result, events, cancel, list."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio.to_thread
import redis.exceptions
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from api.deps import (
    EnqueuerDep,
    EventsDep,
    JobDep,
    JobIdPath,
    MemoryGuardDep,
    OwnerDep,
    RateLimitDep,
    SettingsDep,
    StoreDep,
    caller_scope,
    get_events,
    owned,
)
from api.fanout import (
    HEARTBEAT_S,
    WATCHERS_RETRY_AFTER_S,
    EventHub,
    EventStreamResponse,
    WatchersFull,
    sse,
    wait_terminal,
)
from api.schemas import DeliveryList, Detail, JobCreate, JobList, JobView
from api.store import JobStore, links, view_of
from api.submission import Uploads, base64_uploads, caller_options, submit_once
from api.validation import from_pydantic, invalid
from shared.images import timelapse_webp
from shared.jobs import EventType, JobRecord, JobState
from shared.params import MAX_IMAGE_PROMPTS
from shared.settings import Settings
from shared.storage import result_key, timelapse_key

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_FORM_FILES = ("init_image", "image_prompts")
# `Prefer: wait=N` (RFC 7240, as Replicate uses it): the longest wait a request may ask for.
MAX_PREFER_WAIT_S = 60

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Detail, "description": "API keys are on and none (or a wrong one) was given"},
    404: {"model": Detail, "description": "no such job (or another key's)"},
    503: {"model": Detail, "description": "Redis or the broker is unavailable; see Retry-After"},
}


def json_response(
    model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialise once with pydantic-core, skipping FastAPI's second validation of the return value."""
    return Response(
        model.model_dump_json(by_alias=True),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        **{
                            name: {"type": "string"}
                            for name in ("prompt", "model", "width", "height", "iterations", "cutn", "seed")
                        },
                        **{name: {"type": "string"} for name in ("cut_pow", "step_size", "init_weight")},
                        "webhook": {"type": "string", "format": "uri"},
                        "webhook_events_filter": {"type": "string", "description": "comma-separated events"},
                        "deadline_s": {"type": "string"},
                        "init_image": {"type": "string", "format": "binary"},
                        "image_prompts": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                }
            },
        },
    }
}


async def _form_request(request: Request) -> tuple[JobCreate, Uploads]:
    try:
        form = await request.form(max_files=1 + MAX_IMAGE_PROMPTS, max_fields=32)
    except MultiPartException as exc:
        raise invalid(
            [{"loc": ("body",), "msg": f"malformed form: {exc.message}", "type": "value_error"}]
        ) from exc
    fields: dict[str, Any] = {}
    uploads = Uploads()
    prompt_texts: list[str] = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in _FORM_FILES:
                raise invalid(
                    [{"loc": ("body", name), "msg": "unexpected file field", "type": "value_error"}]
                )
            data = await value.read()
            if name == "init_image":
                if uploads.init_image is not None:
                    raise invalid(
                        [{"loc": ("body", name), "msg": "only one init_image", "type": "value_error"}]
                    )
                uploads.init_image = data
            else:
                uploads.image_prompts.append(data)
        elif name == "image_prompts":
            prompt_texts.append(value)
        elif name in fields:
            raise invalid([{"loc": ("body", name), "msg": f"{name} given twice", "type": "value_error"}])
        elif value != "" or name == "prompt":  # an empty optional field means "use the default"
            fields[name] = value
    if prompt_texts:
        fields["image_prompts"] = prompt_texts
    try:
        create = JobCreate.model_validate(fields)
    except ValidationError as exc:
        raise from_pydantic(exc) from exc
    return create, uploads


async def read_create_request(request: Request, settings: Settings) -> tuple[JobCreate, Uploads]:
    """A job from a JSON body (pictures in base64) or a multipart form (pictures as files)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        create, uploads = await _form_request(request)
    elif content_type in ("", "application/json") or content_type.endswith("+json"):
        # The app's body limit counts bytes as they arrive, so this never holds more than that in memory.
        body = await request.body()
        try:
            create = JobCreate.model_validate_json(body)
        except ValidationError as exc:
            raise from_pydantic(exc) from exc
        uploads = Uploads()
    else:
        raise HTTPException(415, detail="send application/json, or multipart/form-data with picture files")
    base64_pictures = base64_uploads(create, settings)
    if base64_pictures.init_image is not None:
        if uploads.init_image is not None:
            raise invalid(
                [{"loc": ("body", "init_image"), "msg": "init_image given twice", "type": "value_error"}]
            )
        uploads.init_image = base64_pictures.init_image
    uploads.image_prompts.extend(base64_pictures.image_prompts)
    return create, uploads


def prefer_wait(prefer: str | None) -> int | None:
    """Seconds asked for by `Prefer: wait=N` (a bare `wait` is the most, 60); other preferences are
    ignored, as RFC 7240 says. A wait that is not a whole number from 1 to 60 is a 422."""
    if prefer is None:
        return None
    for preference in prefer.split(","):
        name, _, value = preference.split(";")[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value:
            return MAX_PREFER_WAIT_S
        if not value.isdigit() or not 1 <= int(value) <= MAX_PREFER_WAIT_S:
            raise invalid(
                [
                    {
                        "loc": ("header", "Prefer"),
                        "msg": f"wait must be a whole number of seconds from 1 to {MAX_PREFER_WAIT_S}",
                        "type": "value_error",
                    }
                ]
            )
        return int(value)
    return None


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="repeat a submit safely: the same key with the same request returns the first job "
        "(200, `Idempotent-Replayed: true`), with another request a 422; per API key, for 24 h",
    ),
]
CancelAfterHeader = Annotated[
    str | None,
    Header(
        alias="Cancel-After",
        description="a deadline such as 30s, 5m or 1h30m: queued then, the job never starts; running, "
        'it stops at its next iteration (`canceled`, `cancel_reason` "deadline")',
    ),
]
PreferHeader = Annotated[
    str | None,
    Header(
        description="`wait=N` (N from 1 to 60; Replicate's convention): answer 201 with the final job "
        "if it ends within N s, else 202 as usual"
    ),
]


@router.post(
    "",
    status_code=202,
    response_model=JobView,
    openapi_extra=_CREATE_BODY,
    dependencies=[MemoryGuardDep, RateLimitDep],
    responses={
        **_ERRORS,
        200: {
            "model": JobView,
            "description": "an `Idempotency-Key` repeated with the same request: the job it made, with "
            "`Idempotent-Replayed: true`",
        },
        201: {"model": JobView, "description": "with `Prefer: wait=N`: the job ended within N s"},
        409: {"model": Detail, "description": "a request with this Idempotency-Key is still being accepted"},
        413: {"model": Detail, "description": "an upload or the body is too large"},
        415: {"model": Detail},
        429: {"model": Detail, "description": "the queue is full or the rate limit hit; see Retry-After"},
        503: {
            "model": Detail,
            "description": "Redis or the broker is unavailable, or Redis is near its memory limit; "
            "see Retry-After",
        },
    },
)
async def create_job(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    enqueuer: EnqueuerDep,
    owner: OwnerDep,
    idempotency_key: IdempotencyKeyHeader = None,
    cancel_after: CancelAfterHeader = None,
    prefer: PreferHeader = None,
) -> Response:
    """Queue a painting job; answers 202 with the job and its URL in `Location` (201 with the final job
    under `Prefer: wait=N` when it ends in time; 200 for a repeated `Idempotency-Key`)."""
    create, uploads = await read_create_request(request, settings)
    wait_s = prefer_wait(prefer)
    options = await caller_options(create, cancel_after, settings)
    record, replayed = await submit_once(
        create,
        uploads,
        owner=owner,
        scope=caller_scope(request, owner),
        settings=settings,
        store=store,
        enqueuer=enqueuer,
        metrics=request.app.state.metrics,
        options=options,
        idempotency_key=idempotency_key,
        fingerprint_of=("POST /v1/jobs", create.model_dump(mode="json"), cancel_after),
    )
    return await _submitted(request, store, record, wait_s, replayed=replayed)


async def _submitted(
    request: Request, store: JobStore, record: JobRecord, wait_s: int | None, *, replayed: bool
) -> Response:
    """The answer to a submit: the job (final if it ended within `wait_s`), and the headers saying how."""
    headers = {"Location": links(record.id).self_}
    status = 202
    if wait_s is not None:
        headers["Preference-Applied"] = f"wait={wait_s}"
        final = await wait_terminal(
            store, await get_events(request), record.id, wait_s, request.is_disconnected
        )
        if final is not None:
            record, status = final, 201
    if replayed:
        headers["Idempotent-Replayed"] = "true"
        status = 200
    return json_response(await store.view(record), status, headers)


@router.get("", response_model=JobList, responses={401: _ERRORS[401]})
async def list_jobs(
    store: StoreDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    """The caller's jobs, newest first (with API keys off: everyone's)."""
    ids, total = await store.list_ids(owner, limit, offset)
    now = time.time()
    records = [await store.enforce_deadline(record) for record in await store.records(ids)]
    # Positions in the queue are left out of the list: one ZRANK per job would make it slow.
    jobs = [view_of(record, None, now) for record in records]
    return json_response(JobList(jobs=jobs, total=total, limit=limit, offset=offset))


@router.get("/{job_id}", response_model=JobView, responses=_ERRORS)
async def read_job(job_id: JobIdPath, store: StoreDep, owner: OwnerDep) -> Response:
    """State, progress, timings and links of one job."""
    # The hot path of every polling client: the record and its queue position in one round trip.
    found, position = await store.record_with_position(job_id)
    record = owned(found, owner)
    if record.state is JobState.QUEUED and record.deadline_at is not None:
        enforced = await store.enforce_deadline(record)
        if enforced is not record:
            return json_response(await store.view(enforced))
    return json_response(view_of(record, position))


@router.get(
    "/{job_id}/frame",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {"content": {"image/png": {}}, "description": "the latest intermediate picture"},
        304: {"description": "the frame has not changed since the ETag given in If-None-Match"},
    },
)
async def read_frame(
    job_id: JobIdPath,
    store: StoreDep,
    owner: OwnerDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The latest intermediate PNG; poll it with If-None-Match to get 304 while it has not changed."""
    held = _etags(if_none_match) if if_none_match is not None else set()
    # The record and the frame in one round trip; the frame only if the client does not hold it.
    found, frame = await store.record_with_frame(job_id, _held_seqs(job_id, held))
    record = await store.enforce_deadline(owned(found, owner))
    etag = f'"{record.id}-{record.frame_seq}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if record.frame_seq and etag in held:
        return Response(status_code=304, headers=headers)
    if frame is None and record.state is JobState.SUCCEEDED:
        frame = await store.latest_frame(record)  # its bytes have left Redis: the result store's copy
    if frame is None:
        if record.state.terminal and record.frame_seq:
            raise HTTPException(404, detail=f"the frames of this {record.state.value} job have expired")
        raise HTTPException(404, detail="no frame yet")
    return Response(frame, media_type="image/png", headers=headers)


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",")}


def _held_seqs(job_id: str, etags: set[str]) -> list[str]:
    """The frame numbers of this job named by the client's ETags (`"<id>-<seq>"`)."""
    head = f'"{job_id}-'
    return [tag[len(head) : -1] for tag in etags if tag.startswith(head) and tag.endswith('"')]


@router.get(
    "/{job_id}/result",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {"content": {"image/png": {}}, "description": "the final picture"},
        409: {"model": Detail, "description": "the job has not succeeded"},
    },
)
async def read_result(record: JobDep, store: StoreDep) -> Response:
    """The final PNG, once the job has succeeded."""
    if record.state is not JobState.SUCCEEDED:
        raise HTTPException(
            409, detail=f"job is {record.state.value}; the result exists once it has succeeded"
        )
    result = await store.durable(store.keys.result(record.id), result_key(record.id))
    if result is None:
        raise HTTPException(404, detail="the result has expired")
    return Response(result, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get(
    "/{job_id}/timelapse",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {"content": {"image/webp": {}}, "description": "the preview frames as an animated WebP"},
    },
)
async def read_timelapse(record: JobDep, store: StoreDep) -> Response:
    """The job's preview frames (at most `timelapse_max_frames`, spread over the run) as animated WebP."""
    key = store.keys.timelapse(record.id)
    cached = await store.durable(key, timelapse_key(record.id)) if record.state.terminal else None
    if cached is None:
        frames = [
            f for f in await store.redis.lrange(store.keys.frames(record.id), 0, -1) if isinstance(f, bytes)
        ]
        if not frames:
            if record.state.terminal and record.frame_seq:
                raise HTTPException(404, detail=f"the frames of this {record.state.value} job have expired")
            raise HTTPException(404, detail="no frames yet")
        # Encoding is CPU work: off the event loop.
        webp: bytes = await anyio.to_thread.run_sync(timelapse_webp, frames)
        if record.state.terminal:
            await _keep_timelapse(store, record, webp)
        cached = webp
    filename = f"artgen-{record.id[:8]}-timelapse.webp"
    return Response(
        cached,
        media_type="image/webp",
        headers={"Content-Disposition": f'inline; filename="{filename}"', "Cache-Control": "no-cache"},
    )


async def _keep_timelapse(store: JobStore, record: JobRecord, webp: bytes) -> None:
    """A finished job's time-lapse made here (a canceled or failed job's, or one asked for before its
    worker stored it): into the result store, and into Redis only for what is left of the grace TTL."""
    try:
        await anyio.to_thread.run_sync(store.results.put, timelapse_key(record.id), webp, "image/webp")
    except Exception as exc:  # the client still gets its time-lapse; it is rebuilt while frames last
        log.warning("storing the time-lapse of job %s failed: %s: %s", record.id, type(exc).__name__, exc)
    await store.redis.set(store.keys.timelapse(record.id), webp, ex=store.bytes_ttl_left(record))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobView,
    responses={**_ERRORS, 409: {"model": Detail, "description": "the job has already ended"}},
)
async def cancel_job(record: JobDep, store: StoreDep) -> Response:
    """Cancel a job: a queued one never starts, a running one stops within an iteration."""
    if record.state.terminal:
        raise HTTPException(409, detail=f"job is already {record.state.value}")
    await store.cancel(record)
    updated = await store.record(record.id) or record
    return json_response(await store.view(updated), 202)


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    responses={
        **_ERRORS,
        204: {"description": "the job and everything of it are gone (a second DELETE answers 404)"},
        409: {"model": Detail, "description": "the job's worker has not stopped yet; try again"},
    },
)
async def delete_job(record: JobDep, store: StoreDep) -> Response:
    """Remove a job: canceled first if unfinished, then its record, events, frames, result, time-lapse,
    uploads and webhook deliveries, from Redis and from the result store."""
    if not await store.delete(record):
        raise HTTPException(
            409,
            detail="the job is still stopping on its worker; DELETE it again in a few seconds",
            headers={"Retry-After": "5"},
        )
    return Response(status_code=204)


@router.get("/{job_id}/deliveries", response_model=DeliveryList, responses=_ERRORS)
async def read_deliveries(record: JobDep, store: StoreDep) -> Response:
    """Every attempt to deliver this job's webhooks: event, webhook-id, status code, error, outcome."""
    return json_response(DeliveryList(deliveries=await store.deliveries(record.id)))


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        **_ERRORS,
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        503: {
            "model": Detail,
            "description": "this API process serves `ARTGEN_MAX_WATCHERS` event streams already (poll "
            "`GET /v1/jobs/{id}` instead), or Redis is unavailable; see Retry-After",
        },
    },
)
async def job_events(
    job_id: JobIdPath,
    store: StoreDep,
    events: EventsDep,
    owner: OwnerDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-Sent Events: `snapshot` (the job now), then `progress`, `frame`, and a last `finished`.
    A client that reads slowly skips ahead to the newest progress and frame; `finished` always comes."""
    # The record and the stream's newest id in one round trip (a crowd arriving costs one each).
    found, cursor = await store.snapshot_with_cursor(job_id)
    record = owned(found, owner)
    try:
        events.admit()
    except WatchersFull as exc:
        raise HTTPException(
            503,
            detail=f"{exc}; follow the job by polling GET /v1/jobs/{{id}}, or retry later",
            headers={"Retry-After": str(WATCHERS_RETRY_AFTER_S)},
        ) from exc
    # A reconnecting client resumes where it was; a new one starts after the snapshot.
    cursor = _valid_stream_id(last_event_id) or cursor
    return EventStreamResponse(_event_stream(store, events, record, cursor), events)


def _valid_stream_id(value: str | None) -> str | None:
    if value is None:
        return None
    left, _, right = value.partition("-")
    return value if left.isdigit() and right.isdigit() and len(value) < 42 else None


async def _event_stream(
    store: JobStore, hub: EventHub, record: JobRecord, cursor: str
) -> AsyncIterator[bytes]:
    job_id = record.id
    try:
        record = await store.enforce_deadline(record)
        yield sse("snapshot", (await store.view(record)).model_dump_json(by_alias=True))
        if record.state.terminal:
            yield sse(EventType.FINISHED.value, _finished_data(record))
            return
        async with hub.watch(job_id, cursor) as watcher:
            while True:
                batch = await watcher.next_batch(HEARTBEAT_S)
                end = next((i for i, event in enumerate(batch) if event.final), None)
                if end is not None:
                    yield b"".join(event.wire for event in batch[: end + 1])
                    return
                if batch:
                    # Everything waiting in one write: a busy process sends fewer, larger chunks.
                    yield b"".join(event.wire for event in batch)
                    continue
                # No event for a while: say we are alive (the reader checks that the job goes on).
                yield b": keepalive\n\n"
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        # The status line is long sent: tell the client in-band and end; it reconnects with Last-Event-ID.
        log.warning("event stream of job %s ended: redis unavailable (%s)", job_id, exc)
        yield sse("error", '{"detail": "redis unavailable; reconnect later"}')


def _finished_data(record: JobRecord) -> str:
    return json.dumps({"state": record.state.value, "error": record.error})
