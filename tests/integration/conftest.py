"""The real stack for integration tests: a redis-server, Celery worker processes, the API over HTTP.

One Redis, one worker process (two pool slots) and one API serve the whole session, as in Celery's own
integration suite; tests that kill or restart parts start their own with the factories below.
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

import httpx
import pytest
import redis

from shared.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


class Proc:
    """A child process of the stack, with its log file for failure messages."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
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


def wait_for(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05
) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack_env(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for every process of the test stack: settings by ARTGEN_* variables only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTGEN_")}
    env.update(
        {
            "ARTGEN_REDIS_URL": redis_server.url,
            "ARTGEN_REDIS_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
            "ARTGEN_MODEL": "tiny",
            "ARTGEN_DEVICE": "cpu",
            "ARTGEN_MODELS_DIR": str(tmp_path_factory.mktemp("models")),
            "ARTGEN_RESULTS_DIR": str(tmp_path_factory.mktemp("results")),
            "ARTGEN_PREVIEW_EVERY": "2",
            "ARTGEN_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            # Two pool processes on two cores: keep torch from oversubscribing them.
            "OMP_NUM_THREADS": "1",
        }
    )
    return env


@pytest.fixture(scope="session")
def redis_client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture(scope="session")
def start_worker(
    stack_env: dict[str, str], redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Proc]]:
    """Factory: start an `artgen worker` and wait until it announces itself in Redis."""
    started: list[Proc] = []
    log_dir = tmp_path_factory.mktemp("worker-logs")

    def _start(name: str | None = None, concurrency: int = 1, env: dict[str, str] | None = None) -> Proc:
        name = name or f"w{len(started)}-{uuid.uuid4().hex[:6]}"
        hostname = f"{name}@test"
        proc = Proc(
            name,
            ["worker", "--concurrency", str(concurrency), "--hostname", hostname],
            {**stack_env, **(env or {})},
            log_dir,
        )
        started.append(proc)
        workers_key = f"{stack_env['ARTGEN_REDIS_PREFIX']}:workers"

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"worker {name} exited at start:\n{proc.log_tail()}")
            # The heartbeat is written on worker_ready, after the pool processes are up.
            return bool(redis_client.hexists(workers_key, hostname)) and "ready" in proc.log_tail(20000)

        wait_for(ready, 120, f"worker {name} to be ready")
        return proc

    yield _start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def worker(start_worker: Callable[..., Proc]) -> Proc:
    """The session's shared worker: one process, two pool slots (two jobs at once)."""
    return start_worker("shared", concurrency=2)


@pytest.fixture(scope="session")
def start_api(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., str]]:
    """Factory: start an `artgen api` on a free port; returns its base URL once /healthz answers."""
    started: list[Proc] = []
    log_dir = tmp_path_factory.mktemp("api-logs")

    def _start(env: dict[str, str] | None = None) -> str:
        port = free_port()
        proc = Proc(f"api-{port}", ["api", "--port", str(port)], {**stack_env, **(env or {})}, log_dir)
        started.append(proc)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if not proc.alive():
                raise RuntimeError(f"API exited at start:\n{proc.log_tail()}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, "the API to answer /healthz")
        return url

    yield _start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def api_url(start_api: Callable[..., str], worker: Proc) -> str:
    return start_api()


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client
