"""Chains and records of paintings: extend a succeeded job, read a job's manifest."""

from __future__ import annotations

import time
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import ValidationError

from api.deps import (
    EnqueuerDep,
    JobDep,
    MemoryGuardDep,
    OwnerDep,
    RateLimitDep,
    SettingsDep,
    StoreDep,
    caller_scope,
)
from api.routes.jobs import _ERRORS, IdempotencyKeyHeader, json_response
from api.schemas import Detail, ExtendRequest, JobCreate, JobView
from api.store import JobStore, ResultStoreUnavailable, links
from api.submission import Uploads, caller_options, submit_once
from api.validation import from_pydantic, invalid
from shared.jobs import JobParams, JobRecord, JobState
from shared.manifest import painting_params
from shared.prompts import STAGE_SEPARATOR, stage_texts
from shared.settings import Settings
from shared.storage import manifest_key, state_key
from shared.transitions import ADD_CHILD

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


async def _from_store(store: JobStore, read: Any, key: str) -> Any:
    """`read(key)` on the result store (boto3 and disks block: off the event loop)."""
    try:
        return await anyio.to_thread.run_sync(read, key)
    except Exception as exc:  # S3 or the disk away: a 503 for the client, not a 500
        raise ResultStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


async def _check_extendable(store: JobStore, settings: Settings, parent: JobRecord) -> None:
    """A 409 saying why, unless the job's final state is here to continue from."""
    if parent.state is not JobState.SUCCEEDED:
        raise HTTPException(409, detail=f"job is {parent.state.value}; only a succeeded job can be extended")
    if parent.image_prompt_count or parent.init_weight:
        raise HTTPException(
            409,
            detail="a job painted towards image prompts or pulled to its init image (init_weight) cannot be "
            "extended: those pictures are not kept with its state",
        )
    ttl = settings.state_ttl_s
    if parent.finished_at is not None and time.time() > parent.finished_at + ttl:
        raise HTTPException(
            409,
            detail=f"this job's painting state was kept for {ttl} s after it finished (ARTGEN_STATE_TTL_S) "
            "and is gone; paint a new job instead",
        )
    if not await _from_store(store, store.results.exists, state_key(parent.id)):
        raise HTTPException(
            409,
            detail="this job's painting state is no longer kept (removed or swept); paint a new job instead",
        )


def _last_iteration(parent: JobRecord) -> int:
    """Where the parent's kept state stands: its last iteration (earlier when its loss plateaued)."""
    return parent.stopped_at if parent.stopped_at is not None else parent.iterations


def _continuation(parent: JobRecord, extend: ExtendRequest) -> JobCreate:
    """The parent's parameters with the extension's prompt (default: the parent's last stage) and count of
    iterations, checked as any job's are. An extension paints one prompt to its end: no schedule, and no
    early stop (it was asked for these iterations)."""
    if extend.prompt is not None and STAGE_SEPARATOR in extend.prompt:
        raise invalid(
            [
                {
                    "loc": ("body", "prompt"),
                    "msg": f"an extension carries on under one prompt; schedules ({STAGE_SEPARATOR}) are "
                    "for new jobs",
                    "type": "value_error",
                }
            ]
        )
    fields: dict[str, Any] = {
        name: value for name, value in painting_params(parent).items() if name in JobCreate.model_fields
    }
    fields.update(
        model=parent.model,
        iterations=extend.iterations,
        prompt=extend.prompt if extend.prompt is not None else stage_texts(parent.prompt)[-1],
        change_every=None,
        plateau_window=None,
        plateau_delta=0.0,
    )
    try:
        return JobCreate.model_validate(fields)
    except ValidationError as exc:
        raise from_pydantic(exc) from exc


@router.post(
    "/{job_id}/extend",
    status_code=202,
    response_model=JobView,
    dependencies=[MemoryGuardDep, RateLimitDep],
    responses={
        **_ERRORS,
        200: {"model": JobView, "description": "an `Idempotency-Key` repeated with the same request"},
        409: {
            "model": Detail,
            "description": "the job has not succeeded, or its painting state is no longer kept "
            "(ARTGEN_STATE_TTL_S), or it used image prompts",
        },
        429: {"model": Detail, "description": "the queue is full or the rate limit hit; see Retry-After"},
    },
)
async def extend_job(
    body: ExtendRequest,
    parent: JobDep,
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    enqueuer: EnqueuerDep,
    owner: OwnerDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Carry a succeeded job on for `iterations` more, from its final latent and optimiser state (and its
    seed's random stream), under its prompt or a new one: a new job whose `parent` is this one."""
    await _check_extendable(store, settings, parent)
    create = _continuation(parent, body)

    def adjust(params: JobParams) -> JobParams:
        start = _last_iteration(parent)
        return params.model_copy(
            update={"iterations": start + body.iterations, "parent": parent.id, "start_iteration": start}
        )

    record, replayed = await submit_once(
        create,
        Uploads(),
        owner=owner,
        scope=caller_scope(request, owner),
        settings=settings,
        store=store,
        enqueuer=enqueuer,
        metrics=request.app.state.metrics,
        options=await caller_options(create, None, settings),
        idempotency_key=idempotency_key,
        fingerprint_of=("POST /v1/jobs/{id}/extend", parent.id, body.model_dump(mode="json")),
        adjust=adjust,
    )
    headers = {"Location": links(record.id).self_}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    else:
        await store.redis.eval(ADD_CHILD, 1, store.keys.job(parent.id), record.id)
    return json_response(await store.view(record), 200 if replayed else 202, headers)


@router.get(
    "/{job_id}/manifest",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "content": {"application/json": {}},
            "description": "every parameter, the seed, the chain, the model's weights SHA-256, versions, "
            "device and engine options (`artgen generate --manifest` repaints it)",
        },
        409: {"model": Detail, "description": "the job has not succeeded"},
    },
)
async def read_manifest(record: JobDep, store: StoreDep) -> Response:
    """What painted this job's picture, enough to paint it again (the PNG carries it too)."""
    if record.state is not JobState.SUCCEEDED:
        raise HTTPException(
            409, detail=f"job is {record.state.value}; a manifest exists once it has succeeded"
        )
    manifest = await _from_store(store, store.results.get, manifest_key(record.id))
    if manifest is None:
        raise HTTPException(404, detail="the manifest has expired")
    filename = f"artgen-{record.id[:8]}-manifest.json"
    return Response(
        manifest,
        media_type="application/json",
        headers={"Content-Disposition": f'inline; filename="{filename}"'},
    )
