"""Liveness, readiness and Prometheus metrics (no API key needed: they say nothing about jobs)."""

from __future__ import annotations

import time

import redis.exceptions
from fastapi import APIRouter, HTTPException, Request, Response

from api.deps import MemoryDep, SettingsDep, StoreDep
from api.metrics import Metrics, render_job_stats
from api.schemas import Detail, Health, Ready
from shared.jobs import queue_for
from shared.stats import read_stats

router = APIRouter(tags=["health"])

# A worker whose heartbeat is older than this is taken for gone.
WORKER_STALE_S = 30.0


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (it checks nothing else)."""
    return Health(status="ok")


@router.get(
    "/readyz", response_model=Ready, response_model_exclude_none=True, responses={503: {"model": Detail}}
)
async def readyz(store: StoreDep, memory: MemoryDep) -> Ready:
    """Ready when Redis answers and at least one worker has sent a heartbeat in the last 30 s;
    degraded (still 200: reads and running jobs go on) while Redis is near its memory limit."""
    try:
        await store.redis.ping()
        beats = await store.workers()
        used = await memory.read()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise HTTPException(503, detail=f"redis is unreachable ({type(exc).__name__})") from exc
    now = time.time()
    alive = sorted(name for name, beat in beats.items() if _fresh(beat, now))
    if not alive:
        known = (
            f"{len(beats)} known, all silent for over {WORKER_STALE_S:g} s" if beats else "none has started"
        )
        raise HTTPException(503, detail=f"no worker is alive: {known}")
    if used.high:
        return Ready(status="degraded", workers=alive, detail=f"{used.describe()}: new jobs are refused")
    return Ready(status="ready", workers=alive)


def _fresh(beat: dict[str, object], now: float) -> bool:
    ts = beat.get("ts")
    return isinstance(ts, int | float) and now - ts < WORKER_STALE_S


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request, store: StoreDep, settings: SettingsDep, memory: MemoryDep) -> Response:
    """Prometheus text format; queue depths, running jobs and job statistics are read at scrape time."""
    registry: Metrics = request.app.state.metrics
    keys = store.keys
    pipe = store.redis.pipeline(transaction=False)
    models = settings.served_models
    for model in models:
        pipe.zcard(keys.queued(queue_for(model)))
    pipe.scard(keys.running())
    pipe.hgetall(keys.stats())
    *depths, running, raw_stats = await pipe.execute()
    for model, depth in zip(models, depths, strict=True):
        registry.queue_depth.labels(queue_for(model)).set(depth)
    registry.jobs_running.set(running)
    now = time.time()
    registry.workers_alive.set(sum(_fresh(beat, now) for beat in (await store.workers()).values()))
    running_its = await store.running_its()
    used = await memory.read()
    registry.redis_used_memory.set(used.used)
    registry.redis_maxmemory.set(used.maxmemory)
    body = registry.render() + render_job_stats(read_stats(raw_stats), running_its)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
