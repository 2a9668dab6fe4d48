"""The FastAPI application: `create_app()` wires settings, Redis, the enqueuer, routers and handlers."""

from __future__ import annotations

import gc
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from starlette.types import Scope

from api.auth import ApiKeys
from api.fanout import EventHub, make_event_redis
from api.memory import MemoryGauge
from api.metrics import Metrics, MetricsMiddleware
from api.pool import FairConnectionPool
from api.queue import CeleryEnqueuer, Enqueuer
from api.routes import aliases, config, health, jobs, painting
from api.schemas import JobCreate
from api.store import JobStore, ResultStoreUnavailable
from shared.keys import Keys
from shared.params import MAX_IMAGE_PROMPTS
from shared.settings import Settings, get_settings
from shared.storage import ResultStore, make_store

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# Redis connections ordinary requests share in one API process (event streams' readers have their own).
REDIS_CONNECTIONS = 32
# Seconds a request waits for one of them before it is answered 503.
REDIS_POOL_WAIT_S = 5
# Seconds a client should wait while Redis is unreachable.
REDIS_RETRY_AFTER_S = 5
# Seconds a client should wait while Redis refuses writes (finished jobs' pictures need time to expire).
REDIS_FULL_RETRY_AFTER_S = 30
# The collector's thresholds as Python set them; an app's lifespan puts them back when it ends.
PYTHON_GC_THRESHOLDS = gc.get_threshold()


class PageFiles(StaticFiles):
    """The web page's files; `.js` always as JavaScript, or browsers refuse the module scripts."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        # The MIME table is the host's (/etc/mime.types, the Windows registry): it may say text/plain.
        if Path(full_path).suffix == ".js" and response.status_code != 304:
            response.headers["content-type"] = "text/javascript; charset=utf-8"
        return response


def body_limit(settings: Settings) -> int:
    """Largest request body: all pictures of a job within one upload's bytes (as base64), plus fields."""
    return math.ceil(settings.max_upload_bytes * 4 / 3) + 64 * 1024


def make_redis(settings: Settings) -> Redis:
    """One pooled client per process; short timeouts so an outage becomes a quick 503, not a hang.

    The pool is bounded and a request beyond it waits its turn for a connection: a burst of clients
    (thousands of watchers arriving) queues for a few connections instead of opening one each."""
    pool = FairConnectionPool.from_url(
        settings.redis_url,
        max_connections=REDIS_CONNECTIONS,
        wait_s=REDIS_POOL_WAIT_S,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
    )
    return Redis(connection_pool=pool)


@contextmanager
def tuned_collector(full_every: int) -> Iterator[None]:
    """Python's garbage collector as an API process with thousands of open streams needs it.

    A full (generation 2) pass walks every tracked object, every open stream's included: about 0.7 s
    with 5,000 streams here, a pause for every request. Python starts one whenever 10 young (generation
    1) passes have run and the old heap grew by a quarter, so streams arriving by the thousand cause one
    after another. Full passes wait for `full_every` young passes instead; the objects of startup
    (imports, the app) are frozen out of every pass. Cyclic garbage, an ended stream's, is still
    collected: by the young passes while it is young, by the next full pass once it is old."""
    young, middle, _ = PYTHON_GC_THRESHOLDS
    gc.freeze()
    gc.set_threshold(young, middle, full_every)
    try:
        yield
    finally:
        gc.set_threshold(*PYTHON_GC_THRESHOLDS)
        gc.unfreeze()


def create_app(
    settings: Settings | None = None,
    enqueuer: Enqueuer | None = None,
    redis_client: Redis | None = None,
    result_store: ResultStore | None = None,
) -> FastAPI:
    """The app; tests pass their own settings, a recording enqueuer, a fakeredis client and a store."""
    settings = settings or get_settings()
    results = result_store if result_store is not None else make_store(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis_client if redis_client is not None else make_redis(settings)
        # Event readers block: a pool of their own (a test's own client serves both).
        events_client = redis_client if redis_client is not None else make_event_redis(settings)
        queue = enqueuer if enqueuer is not None else CeleryEnqueuer(settings)
        app.state.redis = client
        app.state.events = EventHub(events_client, Keys(settings.redis_prefix), settings.max_watchers)
        app.state.enqueuer = queue
        app.state.store = JobStore(client, Keys(settings.redis_prefix), settings, results, queue.notify)
        app.state.memory = MemoryGauge(client, settings.redis_memory_high)
        try:
            with tuned_collector(settings.api_gc_full_every):
                yield
        finally:
            await app.state.events.close()
            if enqueuer is None:
                queue.close()
            if redis_client is None:
                await client.aclose()
                await events_client.aclose()

    app = FastAPI(
        title="artgen",
        version="1",
        summary="VQGAN+CLIP painting as a service",
        lifespan=lifespan,
        max_body_size=body_limit(settings),
    )
    app.openapi = lambda: _openapi_with_request_bodies(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.api_keys = ApiKeys(settings)
    app.state.metrics = Metrics()
    app.include_router(jobs.router)
    app.include_router(painting.router)
    app.include_router(aliases.router)
    app.include_router(health.router)
    app.include_router(config.router)
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_unavailable)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_unavailable)
    app.add_exception_handler(redis.exceptions.OutOfMemoryError, _redis_full)
    app.add_exception_handler(ResultStoreUnavailable, _result_store_unavailable)
    app.add_exception_handler(RequestValidationError, _validation_error)
    if settings.cors_origins:
        wildcard = "*" in settings.cors_origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            # Credentials are never allowed together with "*": any site could then act as the user.
            allow_credentials=not wildcard,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "If-None-Match",
                "Last-Event-ID",
                "Idempotency-Key",
                "Cancel-After",
                "Prefer",
            ],
            expose_headers=[
                "Location",
                "ETag",
                "X-Job-Id",
                "Retry-After",
                "Idempotent-Replayed",
                "Preference-Applied",
            ],
        )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # The web page, last: every API route above takes precedence over a static file of the same path.
    app.mount("/", PageFiles(directory=STATIC_DIR, html=True, check_dir=False), name="page")
    log.info(
        "API ready for models %s; API keys %s; max %d image prompts",
        settings.served_models,
        "on" if app.state.api_keys.enabled else "off",
        MAX_IMAGE_PROMPTS,
    )
    return app


def _unavailable(
    what: str, detail: str, retry_after_s: int
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    """An exception handler answering 503 with `Retry-After`: a part the API needs is away, never a 500."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        path = request.url.path
        log.warning("%s during %s %s: %s: %s", what, request.method, path, type(exc).__name__, exc)
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(retry_after_s)})

    return handler


_redis_unavailable = _unavailable(
    "redis unavailable", "redis is unavailable; try again shortly", REDIS_RETRY_AFTER_S
)
# Redis refused a write (maxmemory reached under noeviction).
_redis_full = _unavailable(
    "redis is full", "the service is out of memory for new data; try again later", REDIS_FULL_RETRY_AFTER_S
)
_result_store_unavailable = _unavailable(
    "result store unavailable", "the result store is unavailable; try again shortly", REDIS_RETRY_AFTER_S
)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 as FastAPI shapes it, minus the inputs (a 100 kB field need not come back)."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {
            "loc": list(error.get("loc", ())),
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _openapi_with_request_bodies(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus `JobCreate`, which `POST /v1/jobs` reads by hand (JSON or a form) and so
    names only by reference."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        models = schema.setdefault("components", {}).setdefault("schemas", {})
        body = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
        models.update(body.pop("$defs", {}))
        models["JobCreate"] = body
        app.openapi_schema = schema
    return app.openapi_schema


def app_factory() -> FastAPI:
    """For `uvicorn --factory api.main:app_factory`: settings from ARTGEN_* variables."""
    return create_app()
