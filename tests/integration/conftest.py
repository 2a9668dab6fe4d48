"""The real stack for integration tests: a redis-server, Celery worker processes, the API over HTTP.

One `Stack` (one Redis, one worker process with two pool slots, one API) serves the whole session, as
in Celery's own integration suite. Tests that kill or restart parts build a `Stack` of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from launch.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.integration)


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class Proc:
    """A child process of the stack (`artgen ...`), with its log file for failure messages."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", *args],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def signal_group(self, sig: int) -> None:
        """Signal the process and its children (Celery's pool processes)."""
        if self.alive():
            os.killpg(self.process.pid, sig)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.process.wait()
        self._log.close()


class Stack:
    """A private redis-server plus the worker and API processes started against it."""

    def __init__(self, root: Path, **settings: str) -> None:
        self.root = root
        self.redis = RedisServer(root / "redis", appendonly=True).start()
        self.prefix = f"test-{uuid.uuid4().hex[:8]}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ARTGEN_")}
        self.env.update(
            {
                "ARTGEN_REDIS_URL": self.redis.url,
                "ARTGEN_REDIS_PREFIX": self.prefix,
                "ARTGEN_MODEL": "tiny",
                "ARTGEN_DEVICE": "cpu",
                "ARTGEN_MODELS_DIR": str(root / "models"),
                "ARTGEN_RESULTS_DIR": str(root / "results"),
                "ARTGEN_PREVIEW_EVERY": "2",
                # Load tests submit hundreds of jobs from one address; the limit has its own tests.
                "ARTGEN_RATE_LIMIT_PER_MINUTE": "0",
                "ARTGEN_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
                # Pool processes share two cores: keep torch from oversubscribing them.
                "OMP_NUM_THREADS": "1",
            }
        )
        self.env.update({f"ARTGEN_{k.upper()}": v for k, v in settings.items()})
        self.client = redis.Redis.from_url(self.redis.url)
        self.procs: list[Proc] = []

    def start_worker(self, name: str | None = None, concurrency: int = 1, **settings: str) -> Proc:
        """Start an `artgen worker` and wait until it has announced itself in Redis."""
        name = name or f"w{len(self.procs)}-{uuid.uuid4().hex[:6]}"
        hostname = f"{name}@test"
        env = {**self.env, **{f"ARTGEN_{k.upper()}": v for k, v in settings.items()}}
        args = ["worker", "--concurrency", str(concurrency), "--hostname", hostname]
        proc = Proc(name, args, env, self.root)
        self.procs.append(proc)

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"worker {name} exited at start:\n{proc.log_tail()}")
            announced = self.client.hexists(f"{self.prefix}:workers", hostname)
            return bool(announced) and f"{hostname} ready" in proc.log_tail(50_000)

        wait_for(ready, 120, f"worker {name} to be ready", interval_s=0.1)
        return proc

    def start_api(self, **settings: str) -> str:
        """Start an `artgen api` on a free port; returns its base URL once /healthz answers."""
        port = free_port()
        env = {**self.env, **{f"ARTGEN_{k.upper()}": v for k, v in settings.items()}}
        proc = Proc(f"api-{port}", ["api", "--port", str(port)], env, self.root)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if not proc.alive():
                raise RuntimeError(f"API exited at start:\n{proc.log_tail()}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, "the API to answer /healthz", interval_s=0.1)
        return url

    def restart_redis(self, down_s: float = 0.0, during: Callable[[], None] | None = None) -> None:
        """Stop Redis cleanly (it flushes its AOF), optionally act while it is away, start it again."""
        self.redis.stop()
        if during is not None:
            during()
        time.sleep(down_s)
        self.redis.start()

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.redis.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    session_stack = Stack(tmp_path_factory.mktemp("stack"))
    yield session_stack
    session_stack.close()


@pytest.fixture(scope="session")
def redis_client(stack: Stack) -> redis.Redis:
    return stack.client


@pytest.fixture(scope="session")
def worker(stack: Stack) -> Proc:
    """The session's shared worker: one process, two pool slots (two jobs at once)."""
    return stack.start_worker("shared", concurrency=2)


@pytest.fixture(scope="session")
def api_url(stack: Stack, worker: Proc) -> str:
    return stack.start_api()


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client
