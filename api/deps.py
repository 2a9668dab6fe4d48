"""Dependencies shared by the routers, declared once as `Annotated` types.

Every one is `async def`, even those that never wait: FastAPI runs a plain `def` dependency in a thread,
which costs more than the work of a whole progress read.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from redis.asyncio import Redis

from api.auth import ApiKeys, presented_key
from api.fanout import EventHub
from api.memory import MemoryGauge
from api.queue import Enqueuer
from api.store import JobStore
from shared.jobs import JobRecord
from shared.settings import Settings

# uuid4().hex: anything else cannot be a job of ours.
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


async def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


async def get_enqueuer(request: Request) -> Enqueuer:
    enqueuer: Enqueuer = request.app.state.enqueuer
    return enqueuer


async def get_events(request: Request) -> EventHub:
    events: EventHub = request.app.state.events
    return events


async def get_owner(request: Request) -> str:
    """Who is calling: "" with keys off; a 401 with keys on and no valid key."""
    api_keys: ApiKeys = request.app.state.api_keys
    owner = api_keys.owner(presented_key(request.headers) if api_keys.enabled else None)
    if owner is None:
        raise HTTPException(
            401,
            detail="a valid API key is required (Authorization: Bearer <key>, or X-API-Key)",
            headers={"WWW-Authenticate": 'Bearer realm="artgen"'},
        )
    return owner


async def get_memory(request: Request) -> MemoryGauge:
    memory: MemoryGauge = request.app.state.memory
    return memory


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
StoreDep = Annotated[JobStore, Depends(get_store)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]
EventsDep = Annotated[EventHub, Depends(get_events)]
OwnerDep = Annotated[str, Depends(get_owner)]
MemoryDep = Annotated[MemoryGauge, Depends(get_memory)]
JobIdPath = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="the job id (32 hex digits)")]


def owned(record: JobRecord | None, owner: str) -> JobRecord:
    """The record if it is the caller's, else 404 (another key's job is as invisible as a missing one)."""
    if record is None or record.owner != owner:
        raise HTTPException(404, detail="job not found")
    return record


async def get_job(job_id: JobIdPath, store: StoreDep, owner: OwnerDep) -> JobRecord:
    """The caller's job, or 404."""
    return await store.enforce_deadline(owned(await store.record(job_id), owner))


JobDep = Annotated[JobRecord, Depends(get_job)]


def caller_scope(request: Request, owner: str) -> str:
    """Who a rate limit or an Idempotency-Key belongs to: the API key when keys are on, else the client
    address (a short hash either way)."""
    caller = owner or f"ip:{request.client.host if request.client else 'unknown'}"
    return hashlib.sha256(caller.encode()).hexdigest()[:16]


async def limit_submissions(request: Request, store: StoreDep, owner: OwnerDep) -> None:
    """429 with Retry-After when the caller has submitted `rate_limit_per_minute` jobs this minute."""
    limit = store.settings.rate_limit_per_minute
    if not limit:
        return
    retry_after = await store.rate_limited(caller_scope(request, owner), limit)
    if retry_after is not None:
        request.app.state.metrics.jobs_rejected.labels("rate_limited").inc()
        raise HTTPException(
            429,
            detail=f"rate limit: at most {limit} jobs a minute; try again in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


RateLimitDep = Depends(limit_submissions)


async def refuse_when_redis_full(request: Request, memory: MemoryDep) -> None:
    """503 with Retry-After while Redis is above `ARTGEN_REDIS_MEMORY_HIGH` of its maxmemory."""
    try:
        await memory.refuse_if_high()
    except HTTPException:
        request.app.state.metrics.jobs_rejected.labels("redis_memory_high").inc()
        raise


# Listed before RateLimitDep on every submitting route: it refuses before anything is written.
MemoryGuardDep = Depends(refuse_when_redis_full)
