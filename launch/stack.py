"""The whole service on this machine: a redis-server, worker processes and APIs, started and stopped in order.

One class for `artgen up`, the benchmarks in `bench/` and the integration and browser tests. The parts are
real `artgen` subcommands in their own processes, configured by `ARTGEN_*` variables, as compose runs them.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from launch.processes import Proc, free_port, wait_for
from launch.redis_server import RedisServer
from shared.keys import Keys
from shared.settings import Settings

# urllib, not httpx: httpx is a test dependency only. No proxy: the stack is on this machine.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StartupError(RuntimeError):
    """A part of the stack exited, or never became ready, while it started."""


def _as_env(settings: Mapping[str, str]) -> dict[str, str]:
    """Settings by field name (`batch_size`) as the variables the processes read (`ARTGEN_BATCH_SIZE`)."""
    return {f"ARTGEN_{name.upper()}": value for name, value in settings.items()}


def _answers(url: str) -> bool:
    try:
        with _HTTP.open(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):  # refused, timed out, or an HTTP error status such as 503
        return False


class LocalStack:
    """A Redis (its own redis-server in `root/redis`, or one at `redis_url`) and the processes run against it.

    `settings` apply to every process, a `start_*` call's keyword settings to that process only. Children
    get this process's environment, less its `ARTGEN_*` variables unless `inherit_settings`, plus `env`.
    Logs go to `root/<name>.log`, or to this terminal when `log_to_files` is off. Workers are named
    `<name>@<domain>`. `close` stops the APIs (and other services), then the workers, then Redis.
    """

    def __init__(
        self,
        root: Path,
        settings: Mapping[str, str] | None = None,
        *,
        redis_url: str | None = None,
        appendonly: bool = True,
        inherit_settings: bool = False,
        env: Mapping[str, str] | None = None,
        log_to_files: bool = True,
        cwd: Path | None = None,
        domain: str | None = None,
    ) -> None:
        self.root = root
        self.redis: RedisServer | None = None
        if redis_url is None:
            self.redis = RedisServer(root / "redis", appendonly=appendonly)
            redis_url = self.redis.url
        self.redis_url = redis_url
        base = {k: v for k, v in os.environ.items() if inherit_settings or not k.startswith("ARTGEN_")}
        self.env = {**base, **(env or {}), **_as_env(settings or {}), "ARTGEN_REDIS_URL": self.redis_url}
        default_prefix: str = Settings.model_fields["redis_prefix"].default
        self.prefix = self.env.get("ARTGEN_REDIS_PREFIX", default_prefix)
        self.client = redis.Redis.from_url(self.redis_url)  # connects on first use
        self.workers: list[Proc] = []
        self.services: list[Proc] = []
        self._log_to_files = log_to_files
        self._cwd = cwd
        self._domain = domain or socket.gethostname()

    def start(self) -> Self:
        """Start the stack's own redis-server (nothing to do with an outside Redis)."""
        if self.redis is not None:
            self.redis.start()
        return self

    def spawn(self, name: str, args: list[str], **settings: str) -> Proc:
        """Run `artgen <args>` against this stack (e.g. `flower`); it is stopped with the APIs."""
        proc = self._proc(name, args, settings)
        self.services.append(proc)
        return proc

    def start_worker(
        self, name: str | None = None, concurrency: int = 1, *, wait: bool = True, **settings: str
    ) -> Proc:
        """Start an `artgen worker` with `concurrency` pool slots; with `wait`, until it takes jobs."""
        name = name or f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        hostname = f"{name}@{self._domain}"
        args = ["worker", "--concurrency", str(concurrency), "--hostname", hostname]
        proc = self._proc(name, args, settings)
        self.workers.append(proc)

        def ready() -> bool:
            if not proc.alive():
                raise StartupError(f"worker {name} exited at start:\n{proc.log_tail()}")
            announced = bool(self.client.hexists(Keys(self.prefix).workers(), hostname))
            # Announced (so /readyz counts it) and consuming (Celery logs "<hostname> ready.").
            return announced and (proc.log_path is None or f"{hostname} ready" in proc.log_tail(50_000))

        if wait:
            wait_for(ready, 120, f"worker {name} to be ready", interval_s=0.1)
        return proc

    def start_api(
        self, *, host: str = "127.0.0.1", port: int | None = None, wait: bool = True, **settings: str
    ) -> str:
        """Start an `artgen api` (a free port by default); its base URL, with `wait` once /healthz answers."""
        port = port or free_port()
        proc = self.spawn(f"api-{port}", ["api", "--host", host, "--port", str(port)], **settings)
        url = f"http://{host}:{port}"

        def healthy() -> bool:
            if not proc.alive():
                raise StartupError(f"API exited at start:\n{proc.log_tail()}")
            return _answers(f"{url}/healthz")

        if wait:
            wait_for(healthy, 60, "the API to answer /healthz", interval_s=0.1)
        return url

    def start_webhooks(self, name: str = "webhooks", *, wait: bool = True, **settings: str) -> Proc:
        """Start an `artgen webhooks` (webhook deliveries, deadlines, result sweeps); with `wait`, until
        it takes tasks."""
        hostname = f"{name}@{self._domain}"
        proc = self.spawn(name, ["webhooks", "--hostname", hostname], **settings)

        def ready() -> bool:
            if not proc.alive():
                raise StartupError(f"the webhooks worker exited at start:\n{proc.log_tail()}")
            return proc.log_path is None or f"{hostname} ready" in proc.log_tail(50_000)

        if wait:
            wait_for(ready, 60, "the webhooks worker to be ready", interval_s=0.1)
        return proc

    def up(self, *, host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 180.0) -> str:
        """Start one worker (one pool slot), the webhooks worker and one API together; the API's URL once
        /readyz says ready."""
        self.start_worker("worker", wait=False)
        self.start_webhooks(wait=False)
        url = self.start_api(host=host, port=port, wait=False)
        self.wait_ready(url, timeout_s)
        return url

    def wait_ready(self, url: str, timeout_s: float = 180.0) -> None:
        """Wait until the API at `url` is ready (Redis answers, a worker is alive); fail fast on an exit."""

        def ready() -> bool:
            if (gone := self.exited()) is not None:
                code, tail = gone.process.returncode, gone.log_tail()
                said = f":\n{tail}" if tail else "; see its output above"
                raise StartupError(f"the {gone.name} exited at start (status {code}){said}")
            return _answers(f"{url}/readyz")

        try:
            wait_for(ready, timeout_s, "readiness", interval_s=0.2)
        except TimeoutError:
            raise StartupError(
                f"the service was not ready at {url}/readyz within {timeout_s:.0f} s"
            ) from None

    def exited(self) -> Proc | None:
        """The first of the stack's processes that is no longer running, if any."""
        return next((proc for proc in [*self.services, *self.workers] if not proc.alive()), None)

    def restart_redis(self, down_s: float = 0.0, during: Callable[[], None] | None = None) -> None:
        """Stop Redis cleanly (it flushes its AOF), optionally act while it is away, start it again."""
        if self.redis is None:
            raise RuntimeError(f"this stack uses the Redis at {self.redis_url}, which it did not start")
        self.redis.stop()
        if during is not None:
            during()
        time.sleep(down_s)
        self.redis.start()

    def close(self) -> None:
        """Stop the APIs and services (no new jobs), then the workers (they hand jobs back), then Redis."""
        for proc in [*self.services, *self.workers]:
            proc.stop()
        if self.redis is not None:
            self.redis.stop()
        self.client.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _proc(self, name: str, args: list[str], settings: Mapping[str, str]) -> Proc:
        log_path = None
        if self._log_to_files:
            self.root.mkdir(parents=True, exist_ok=True)
            log_path = self.root / f"{name}.log"
        return Proc(name, args, {**self.env, **_as_env(settings)}, log_path, self._cwd)
