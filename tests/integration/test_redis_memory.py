"""Redis holds only what is live, on the real stack: real redis-servers, `artgen worker`, `artgen api`.

- a finished job's pictures leave Redis after the grace TTL and are then served from the result store;
- the broker can live on a Redis of its own (`ARTGEN_BROKER_URL`), the job data on another;
- with a small `maxmemory`, submissions are refused (503 + Retry-After) before Redis refuses a write,
  and the jobs already running all finish.

Each test starts a `Stack` of its own (conftest's: the launcher's stack with the tests' settings, its own
redis-server for the job data) with one worker and one API, so that it can reconfigure that Redis freely;
the broker's Redis, where apart, is a second `RedisServer` of the launcher.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from launch.redis_server import RedisServer
from shared.keys import Keys
from tests.integration.conftest import Stack, wait_for

TERMINAL = {"succeeded", "failed", "canceled"}


def _submit(http: httpx.Client, **body: Any) -> httpx.Response:
    payload = {"prompt": "a lighthouse", "width": 32, "height": 32, "iterations": 12, "cutn": 4, **body}
    return http.post("/v1/jobs", json=payload)


def _ended(http: httpx.Client, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        view: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        return view if view["status"] in TERMINAL else None

    result: dict[str, Any] = wait_for(ended, timeout_s, f"job {job_id} to end", interval_s=0.25)
    return result


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A second redis-server, for Celery's queues alone. Set up before `service`, so stopped after it."""
    server = RedisServer(tmp_path / "redis-broker", appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Callable[..., tuple[Stack, str]]]:
    """Start a Stack with settings for all its processes, one worker, one API: the stack, the API's URL."""
    stacks: list[Stack] = []

    def start(**settings: str) -> tuple[Stack, str]:
        stack = Stack(tmp_path / f"stack{len(stacks)}", **settings)
        stacks.append(stack)
        return stack, stack.up(timeout_s=180)

    yield start
    for stack in stacks:  # the API and the worker before the Redis servers they hand jobs back to
        stack.close()


def test_broker_and_data_on_two_redis_servers_and_bytes_leave_after_the_grace_ttl(
    broker: RedisServer, service: Callable[..., tuple[Stack, str]]
) -> None:
    stack, url = service(broker_url=broker.url, finished_bytes_ttl_s="3", preview_every="2")
    data = stack.client
    keys = Keys(stack.prefix)
    with httpx.Client(base_url=url, timeout=30) as http, redis.Redis.from_url(broker.url) as broker_client:
        ids = [_submit(http, seed=i).raise_for_status().json()["id"] for i in range(3)]
        views = [_ended(http, job_id) for job_id in ids]
        assert [view["status"] for view in views] == ["succeeded"] * 3, views

        # Job data only on the data server; Celery's queues and bindings only on the broker's.
        data_keys = {key.decode() for key in data.keys("*")}
        broker_keys = {key.decode() for key in broker_client.keys("*")}
        assert keys.job(ids[0]) in data_keys
        assert not any(key.startswith(stack.prefix) for key in broker_keys), broker_keys
        assert any("kombu" in key for key in broker_keys), broker_keys
        assert not any("kombu" in key or key.startswith("artgen.") for key in data_keys), data_keys

        # Within the grace TTL a client that fetches at once gets the pictures from Redis ...
        for job_id in ids:
            assert 0 < data.ttl(keys.result(job_id)) <= 3
        time.sleep(0.5)
        # ... after it, only the record and events are left, and the store serves the pictures.
        wait_for(
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


def test_near_maxmemory_submissions_get_503_and_running_jobs_still_finish(
    service: Callable[..., tuple[Stack, str]],
) -> None:
    stack, url = service(redis_memory_high="0.5", finished_bytes_ttl_s="2", batch_size="1", preview_every="5")
    data = stack.client
    with httpx.Client(base_url=url, timeout=30) as http:
        # Long enough to still be running (or queued behind the first) when the limit is set.
        running = [_submit(http, iterations=150, seed=i).raise_for_status().json()["id"] for i in range(2)]
        wait_for(
            lambda: http.get(f"/v1/jobs/{running[0]}").json()["status"] == "running", 60, "a job to start"
        )

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
        assert not any("OOM" in proc.log() for proc in [*stack.workers, *stack.services])
        errors = data.info("errorstats")
        assert not any("OOM" in name for name in errors), errors

        # More room (an operator raising maxmemory): the next reading lets submissions in again.
        data.config_set("maxmemory", str(int(int(data.info("memory")["used_memory"]) / 0.3)))
        time.sleep(1.2)
        assert _submit(http).status_code == 202
