"""Where the time of `GET /v1/jobs/{id}` (or `/frame`) goes: the app called in-process over ASGI, no HTTP
server or client in the way, against its own redis-server, under pyinstrument (`pip install pyinstrument`).

    python bench/profile_progress.py --requests 5000 [--path frame] [--html profile.html]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from api.main import create_app  # noqa: E402
from api.queue import Enqueuer  # noqa: E402
from launch.redis_server import RedisServer  # noqa: E402
from shared.jobs import JobParams  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import make_store  # noqa: E402


class _NoBroker:
    """The job is written to Redis as usual; nothing is published (no worker in this profile)."""

    async def enqueue(self, job_id: str, queue: str) -> None:
        return None

    def notify(self, job_id: str, event: str, webhook_id: str) -> None:
        return None

    def close(self) -> None:
        return None


async def _call(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _run(args: argparse.Namespace, redis_url: str, work: Path) -> None:
    settings = Settings(
        redis_url=redis_url, redis_prefix="profile", model="tiny", results_dir=work / "results"
    )
    enqueuer: Enqueuer = _NoBroker()
    app = create_app(settings, enqueuer=enqueuer, result_store=make_store(settings))
    async with app.router.lifespan_context(app):
        store = app.state.store
        params = JobParams(
            prompt="a lighthouse", model="tiny", width=64, height=64, iterations=10, seed=7, cutn=8
        )
        record = await store.create(params, "", None, [])
        await store.redis.set(store.keys.frame(record.id), b"\x89PNG fake frame")
        await store.redis.hset(store.keys.job(record.id), "frame_seq", 1)
        path = f"/v1/jobs/{record.id}" + ("/frame" if args.path == "frame" else "")
        headers = [(b"if-none-match", f'"{record.id}-1"'.encode())] if args.path == "frame" else []
        assert await _call(app, path, headers) in (200, 304)
        for _ in range(200):  # warm-up
            await _call(app, path, headers)
        if args.no_profile:
            start = time.perf_counter()
            for _ in range(args.requests):
                await _call(app, path, headers)
            took = time.perf_counter() - start
            print(f"{args.requests} requests of {path}: {args.requests / took:.0f}/s in-process")
            return
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001, async_mode="disabled")
        start = time.perf_counter()
        profiler.start()
        for _ in range(args.requests):
            await _call(app, path, headers)
        profiler.stop()
        took = time.perf_counter() - start
        print(f"{args.requests} requests of {path}: {args.requests / took:.0f}/s in-process (profiled)")
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        if args.html:
            Path(args.html).write_text(profiler.output_html())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--path", choices=["job", "frame"], default="job")
    parser.add_argument("--html", help="also write pyinstrument's HTML report here")
    parser.add_argument("--no-profile", action="store_true", help="only the requests per second")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="artgen-profile-"))
    server = RedisServer(work / "redis", appendonly=False).start()
    try:
        asyncio.run(_run(args, server.url, work))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
