"""The floor for `GET /v1/jobs/{id}`: FastAPI + redis.asyncio, one HGETALL of the job's hash, nothing else.

`bench/progress.py` runs it beside artgen's API, under the same uvicorn settings, to compare like with like.

    python bench/anchor.py --port 8100 --redis-url redis://127.0.0.1:6379/0 --prefix artgen
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, HTTPException
from redis.asyncio import Redis


def make_app(redis_url: str, prefix: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = Redis.from_url(redis_url, max_connections=512)
        yield
        await app.state.redis.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/jobs/{job_id}")
    async def read_job(job_id: str) -> dict[str, str]:
        raw = await app.state.redis.hgetall(f"{prefix}:job:{job_id}")
        if not raw:
            raise HTTPException(404, detail="job not found")
        return {k.decode(): v.decode() for k, v in raw.items()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="artgen")
    args = parser.parse_args()
    # The settings `artgen api` runs uvicorn with (api/cli.py): one process, no access log.
    uvicorn.run(
        make_app(args.redis_url, args.prefix),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
