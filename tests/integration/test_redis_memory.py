"""Redis holds only what is live, on the real stack: real redis-servers, `artgen worker`, `artgen api`.

- a finished job's pictures leave Redis after the grace TTL and are then served from the result store;
- the broker can live on a Redis of its own (`ARTGEN_BROKER_URL`), the job data on another;
- with a small `maxmemory`, submissions are refused (503 + Retry-After) before Redis refuses a write,
  and the jobs already running all finish.

The stacks are started here by small helpers of this module (not the session `Stack` of conftest), so
that each test controls its own Redis servers; only conftest's automatic `integration` marker applies.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
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

from shared.keys import Keys

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "canceled"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class _Children:
    """Processes this module starts (each in its own session, so a stop reaches Celery's pool too)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def redis_server(self, name: str) -> redis.Redis:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not on PATH")
        port = _free_port()
        data = self.root / name
        data.mkdir()
        self.spawn(
            name,
            [
                binary,
                *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""),
                *("--appendonly", "no", "--maxmemory-policy", "noeviction"),
            ],
        )
        client = redis.Redis(port=port, socket_timeout=5)

        def pings() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        _until(pings, 10, f"redis-server {name}")
        return client

    def artgen(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # The `artgen` console script of this environment, whichever module implements it.
        return self.spawn(name, [str(Path(sys.executable).parent / "artgen"), *args], env)

    def stop(self) -> None:
        # Last started, first stopped: the worker and API before the Redis servers they hand jobs back to.
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://127.0.0.1:{kwargs['port']}/0"


class _Service:
    """One API and one worker on the given data Redis (and broker Redis, when apart)."""

    def __init__(
        self, children: _Children, data: redis.Redis, broker: redis.Redis | None = None, **settings: str
    ) -> None:
        self.children = children
        self.data = data
        self.prefix = f"it-{uuid.uuid4().hex[:8]}"
        self.keys = Keys(self.prefix)
        root = children.root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ARTGEN_")}
        self.env.update(
            {
                "ARTGEN_REDIS_URL": _url(data),
                "ARTGEN_REDIS_PREFIX": self.prefix,
                "ARTGEN_MODEL": "tiny",
                "ARTGEN_DEVICE": "cpu",
                "ARTGEN_MODELS_DIR": str(root / "models"),
                "ARTGEN_RESULTS_DIR": str(root / "results"),
                "ARTGEN_RATE_LIMIT_PER_MINUTE": "0",
                "ARTGEN_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1",
            }
        )
        if broker is not None:
            self.env["ARTGEN_BROKER_URL"] = _url(broker)
        self.env.update({f"ARTGEN_{k.upper()}": v for k, v in settings.items()})
        worker_name = f"soak-{uuid.uuid4().hex[:6]}@test"
        self.worker = children.artgen(
            "worker", ["worker", "--concurrency", "1", "--hostname", worker_name], self.env
        )
        port = _free_port()
        self.api = children.artgen("api", ["api", "--port", str(port)], self.env)
        self.url = f"http://127.0.0.1:{port}"
        _until(self._ready, 180, "the API and its worker (/readyz)")

    def _ready(self) -> bool:
        for name, proc in (("worker", self.worker), ("api", self.api)):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start:\n{self.children.log(name)[-3000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def _submit(http: httpx.Client, **body: Any) -> httpx.Response:
    payload = {"prompt": "a lighthouse", "width": 32, "height": 32, "iterations": 12, "cutn": 4, **body}
    return http.post("/v1/jobs", json=payload)


def _ended(http: httpx.Client, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        view: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        return view if view["status"] in TERMINAL else None

    result: dict[str, Any] = _until(ended, timeout_s, f"job {job_id} to end", interval_s=0.25)
    return result


@pytest.fixture
def children(tmp_path: Path) -> Iterator[_Children]:
    spawned = _Children(tmp_path)
    yield spawned
    spawned.stop()


def test_broker_and_data_on_two_redis_servers_and_bytes_leave_after_the_grace_ttl(
    children: _Children,
) -> None:
    broker = children.redis_server("redis-broker")
    data = children.redis_server("redis-data")
    service = _Service(children, data, broker, finished_bytes_ttl_s="3", preview_every="2")
    keys = service.keys
    with httpx.Client(base_url=service.url, timeout=30) as http:
        ids = [_submit(http, seed=i).raise_for_status().json()["id"] for i in range(3)]
        views = [_ended(http, job_id) for job_id in ids]
        assert [view["status"] for view in views] == ["succeeded"] * 3, views

        # Job data only on the data server; Celery's queues and bindings only on the broker's.
        data_keys = {key.decode() for key in data.keys("*")}
        broker_keys = {key.decode() for key in broker.keys("*")}
        assert keys.job(ids[0]) in data_keys
        assert not any(key.startswith(service.prefix) for key in broker_keys), broker_keys
        assert any("kombu" in key for key in broker_keys), broker_keys
        assert not any("kombu" in key or key.startswith("artgen.") for key in data_keys), data_keys

        # Within the grace TTL a client that fetches at once gets the pictures from Redis ...
        for job_id in ids:
            assert 0 < data.ttl(keys.result(job_id)) <= 3
        time.sleep(0.5)
        # ... after it, only the record and events are left, and the store serves the pictures.
        _until(
            lambda: not any(data.exists(key) for job_id in ids for key in keys.bytes_for_job(job_id)),
            30,
            "the finished jobs' bytes to leave Redis",
        )
        for job_id in ids:
            assert data.exists(keys.job(job_id)) and data.exists(keys.events(job_id))
            assert data.ttl(keys.job(job_id)) > 3600
            result = http.get(f"/v1/jobs/{job_id}/result")
            assert result.status_code == 200 and result.content.startswith(b"\x89PNG")
            frame = http.get(f"/v1/jobs/{job_id}/frame")
            assert frame.status_code == 200 and frame.content == result.content
            timelapse = http.get(f"/v1/jobs/{job_id}/timelapse")
            assert timelapse.status_code == 200 and timelapse.content[8:12] == b"WEBP"


def test_near_maxmemory_submissions_get_503_and_running_jobs_still_finish(children: _Children) -> None:
    data = children.redis_server("redis")
    service = _Service(
        children, data, redis_memory_high="0.5", finished_bytes_ttl_s="2", batch_size="1", preview_every="5"
    )
    with httpx.Client(base_url=service.url, timeout=30) as http:
        # Long enough to still be running (or queued behind the first) when the limit is set.
        running = [_submit(http, iterations=150, seed=i).raise_for_status().json()["id"] for i in range(2)]
        _until(lambda: http.get(f"/v1/jobs/{running[0]}").json()["status"] == "running", 60, "a job to start")

        # A limit with room for the running jobs (used is 60% of it) but above the 50% high-water mark.
        used = int(data.info("memory")["used_memory"])
        data.config_set("maxmemory", str(int(used / 0.6)))
        time.sleep(1.2)  # the API reads INFO at most once a second

        refused = _submit(http)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) > 0 and "memory" in refused.json()["detail"]
        alias = http.post("/v1/generate_text2img", params={"prompt": "a fox", "wait": "false"})
        assert alias.status_code == 503 and "retry-after" in alias.headers
        ready = http.get("/readyz").json()
        assert ready["status"] == "degraded", ready
        metrics = http.get("/metrics").text
        exported = re.search(r"^artgen_redis_maxmemory_bytes (\S+)$", metrics, flags=re.MULTILINE)
        assert exported is not None and float(exported.group(1)) == int(used / 0.6), metrics

        views = [_ended(http, job_id) for job_id in running]
        assert [view["status"] for view in views] == ["succeeded"] * 2, views
        for job_id in running:
            assert http.get(f"/v1/jobs/{job_id}/result").status_code == 200
        # No write was refused on the way: Redis counts the commands it rejects for memory.
        assert "OOM" not in children.log("worker") and "OOM" not in children.log("api")
        errors = data.info("errorstats")
        assert not any("OOM" in name for name in errors), errors

        # More room (an operator raising maxmemory): the next reading lets submissions in again.
        data.config_set("maxmemory", str(int(int(data.info("memory")["used_memory"]) / 0.3)))
        time.sleep(1.2)
        assert _submit(http).status_code == 202
