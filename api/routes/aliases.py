"""The original API's four services, kept by name and behaviour, over the same jobs as /v1/jobs."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, File, HTTPException, Query, Request, Response, UploadFile
from pydantic import ValidationError

from api.deps import (
    JOB_ID_PATTERN,
    EnqueuerDep,
    MemoryGuardDep,
    OwnerDep,
    RateLimitDep,
    SettingsDep,
    StoreDep,
    caller_scope,
    get_events,
)
from api.fanout import wait_terminal
from api.queue import Enqueuer
from api.routes.jobs import IdempotencyKeyHeader, json_response
from api.schemas import Detail, JobCreate, JobView
from api.store import JobStore
from api.submission import Uploads, caller_options, submit_once
from api.uploads import png_to_jpeg
from api.validation import from_pydantic
from shared.jobs import JobRecord, JobState
from shared.settings import Settings
from shared.storage import result_key

router = APIRouter(prefix="/v1", tags=["original API"])

Prompt = Annotated[str, Query(description="`text:weight:stop` pieces joined by `|`")]
Size = Annotated[int | None, Query(description="pixels, a multiple of 16")]
Iterations = Annotated[int | None, Query()]
Seed = Annotated[int | None, Query()]
Model = Annotated[str | None, Query()]
Wait = Annotated[bool, Query(description="false: answer 202 with the job at once instead of the picture")]
JobIdQuery = Annotated[str | None, Query(pattern=JOB_ID_PATTERN, description="default: your most recent job")]

_PICTURE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "the final picture; the job id is in X-Job-Id"},
    202: {"model": JobView, "description": "with wait=false: the queued job"},
    422: {
        "model": Detail,
        "description": "bad parameters, or an Idempotency-Key reused with another request",
    },
    401: {"model": Detail},
    409: {"model": Detail, "description": "the job was canceled"},
    413: {"model": Detail},
    429: {"model": Detail},
    502: {"model": Detail, "description": "the worker failed the job"},
    503: {"model": Detail},
    504: {"model": Detail, "description": "the job did not end in time; follow it by its X-Job-Id"},
}


def _create(
    prompt: str,
    width: int | None,
    height: int | None,
    iterations: int | None,
    seed: int | None,
    model: str | None,
) -> JobCreate:
    try:
        return JobCreate(
            prompt=prompt, width=width, height=height, iterations=iterations, seed=seed, model=model
        )
    except ValidationError as exc:
        raise from_pydantic(exc, prefix="query") from exc


async def _run(
    request: Request,
    create: JobCreate,
    uploads: Uploads,
    wait: bool,
    owner: str,
    settings: Settings,
    store: JobStore,
    enqueuer: Enqueuer,
    idempotency_key: str | None,
) -> Response:
    record, replay = await submit_once(
        create,
        uploads,
        owner=owner,
        scope=caller_scope(request, owner),
        settings=settings,
        store=store,
        enqueuer=enqueuer,
        metrics=request.app.state.metrics,
        options=await caller_options(create, None, settings),
        idempotency_key=idempotency_key,
        fingerprint_of=(request.url.path, create.model_dump(mode="json")),
    )
    replayed = {"Idempotent-Replayed": "true"} if replay else {}
    if not wait:
        view = await store.view(record)
        return json_response(view, 202, {"Location": view.links.self_, "X-Job-Id": record.id, **replayed})
    final = await wait_terminal(
        store, await get_events(request), record.id, settings.blocking_timeout_s, request.is_disconnected
    )
    response = await _final_picture(store, record, final, settings)
    response.headers.update(replayed)
    return response


async def _final_picture(
    store: JobStore, record: JobRecord, final: JobRecord | None, settings: Settings
) -> Response:
    headers = {"X-Job-Id": record.id}
    if final is None:
        raise HTTPException(
            504,
            detail=f"job {record.id} did not finish within {settings.blocking_timeout_s:g} s; "
            f"follow it at /v1/jobs/{record.id}",
            headers=headers,
        )
    if final.state is JobState.FAILED:
        raise HTTPException(502, detail=f"worker failed: {final.error}", headers=headers)
    if final.state is JobState.CANCELED:
        raise HTTPException(409, detail=f"job {record.id} was canceled", headers=headers)
    png = await store.durable(store.keys.result(record.id), result_key(record.id))
    if png is None:
        raise HTTPException(
            502, detail=f"job {record.id} succeeded but its result is missing", headers=headers
        )
    jpeg = await anyio.to_thread.run_sync(png_to_jpeg, png)
    return Response(jpeg, media_type="image/jpeg", headers=headers)


@router.post(
    "/generate_text2img",
    response_class=Response,
    responses=_PICTURE,
    dependencies=[MemoryGuardDep, RateLimitDep],
)
async def generate_text2img(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    enqueuer: EnqueuerDep,
    owner: OwnerDep,
    prompt: Prompt,
    width: Size = None,
    height: Size = None,
    iterations: Iterations = None,
    seed: Seed = None,
    model: Model = None,
    wait: Wait = True,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Paint from text and answer the picture as JPEG once done (the original API's service)."""
    create = _create(prompt, width, height, iterations, seed, model)
    return await _run(request, create, Uploads(), wait, owner, settings, store, enqueuer, idempotency_key)


@router.post(
    "/generate_textimg2img",
    response_class=Response,
    responses=_PICTURE,
    dependencies=[MemoryGuardDep, RateLimitDep],
)
async def generate_textimg2img(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    enqueuer: EnqueuerDep,
    owner: OwnerDep,
    image: Annotated[UploadFile, File(description="the start picture (PNG, JPEG or WEBP)")],
    prompt: Prompt,
    width: Size = None,
    height: Size = None,
    iterations: Iterations = None,
    seed: Seed = None,
    model: Model = None,
    wait: Wait = True,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Paint from text and a start picture; answers the picture as JPEG once done."""
    create = _create(prompt, width, height, iterations, seed, model)
    uploads = Uploads(init_image=await image.read())
    return await _run(request, create, uploads, wait, owner, settings, store, enqueuer, idempotency_key)


async def _job_for(store: JobStore, owner: str, job_id: str | None) -> JobRecord:
    job_id = job_id or await store.latest(owner)
    record = await store.record(job_id) if job_id else None
    if record is None or record.owner != owner:
        raise HTTPException(404, detail="job not found" if job_id else "no jobs yet")
    return record


@router.api_route(
    "/generate_text2img_progressimg",
    methods=["GET", "POST"],
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, 401: {"model": Detail}, 404: {"model": Detail}},
)
async def progress_image(store: StoreDep, owner: OwnerDep, job_id: JobIdQuery = None) -> Response:
    """The latest picture of a job as JPEG (its last frame; its result once it has no frame)."""
    record = await _job_for(store, owner, job_id)
    png = await store.latest_frame(record)
    if png is None:
        raise HTTPException(404, detail="no frame yet", headers={"X-Job-Id": record.id})
    jpeg = await anyio.to_thread.run_sync(png_to_jpeg, png)
    return Response(
        jpeg, media_type="image/jpeg", headers={"X-Job-Id": record.id, "Cache-Control": "no-cache"}
    )


@router.api_route(
    "/generate_text2img_progressbar",
    methods=["GET", "POST"],
    response_model=str,
    responses={401: {"model": Detail}, 404: {"model": Detail}},
)
async def progress_bar(store: StoreDep, owner: OwnerDep, job_id: JobIdQuery = None) -> Response:
    """The iteration count as a JSON string, e.g. "37", as the original answered."""
    record = await _job_for(store, owner, job_id)
    return Response(f'"{record.iteration}"', media_type="application/json", headers={"X-Job-Id": record.id})
