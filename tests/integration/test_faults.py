"""Faults against the real stack: workers killed or stopped mid-job, Redis restarted, 200 jobs at once.

Each test builds its own Stack (own redis-server), so it can kill and restart parts freely.
"""

from __future__ import annotations

import io
import json
import signal
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.integration.conftest import Stack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TERMINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    # A short lock TTL so that a dead worker is noticed within seconds, frequent checkpoints.
    stack = Stack(tmp_path, lock_ttl_s="5", checkpoint_every="10")
    yield stack
    stack.close()


def job_view(http: httpx.Client, job_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_state(http: httpx.Client, job_id: str, states: set[str], timeout_s: float = 120) -> dict[str, Any]:
    return wait_for(
        lambda: (view := job_view(http, job_id))["status"] in states and view,
        timeout_s,
        f"job {job_id} to reach {states}",
    )


def finished_events(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    entries = stack.client.xrange(f"{stack.prefix}:job:{job_id}:events")
    return [json.loads(f[b"data"]) for _, f in entries if f[b"event"] == b"finished"]


def progress_events(stack: Stack, job_id: str) -> list[int]:
    entries = stack.client.xrange(f"{stack.prefix}:job:{job_id}:events")
    return [json.loads(f[b"data"])["iteration"] for _, f in entries if f[b"event"] == b"progress"]


def test_sigkill_mid_job_resumes_from_the_checkpoint_on_another_worker(own_stack: Stack) -> None:
    first = own_stack.start_worker("doomed")
    url = own_stack.start_api()
    with httpx.Client(base_url=url, timeout=30) as http:
        body = {"prompt": "a stormy sea", "width": 64, "height": 64, "iterations": 300, "cutn": 8, "seed": 3}
        job = http.post("/v1/jobs", json=body).json()
        wait_for(lambda: job_view(http, job["id"])["iteration"] >= 25, 120, "iteration 25")

        first.signal_group(signal.SIGKILL)  # the worker and its pool process, with no warning
        first.process.wait()
        killed_at = job_view(http, job["id"])["iteration"]
        assert job_view(http, job["id"])["status"] == "running"  # nobody has noticed yet

        own_stack.start_worker("rescuer")
        final = wait_state(http, job["id"], TERMINAL, timeout_s=180)

        assert final["status"] == "succeeded", final
        assert final["iteration"] == 300 and final["attempts"] == 2
        view_from_redis = own_stack.client.hgetall(f"{own_stack.prefix}:job:{job['id']}")
        resumed_from = int(view_from_redis[b"resumed_from"])
        # It resumed after a checkpoint (every 10 iterations), not from zero, and not past the kill.
        assert 20 <= resumed_from <= killed_at and resumed_from % 10 == 0
        progress = progress_events(own_stack, job["id"])
        assert progress[progress.index(resumed_from) + 1] == resumed_from + 1  # no restart from 1
        assert progress.count(1) == 1
        # Exactly one result, announced once.
        assert len(finished_events(own_stack, job["id"])) == 1
        assert http.get(f"/v1/jobs/{job['id']}/result").status_code == 200


def test_sigterm_hands_the_running_job_back(own_stack: Stack) -> None:
    leaving = own_stack.start_worker("leaving")
    url = own_stack.start_api()
    with httpx.Client(base_url=url, timeout=30) as http:
        body = {"prompt": "a quiet harbour", "width": 64, "height": 64, "iterations": 400, "cutn": 8}
        job = http.post("/v1/jobs", json=body).json()
        wait_for(lambda: job_view(http, job["id"])["iteration"] >= 5, 120, "iteration 5")

        started = time.monotonic()
        leaving.process.send_signal(signal.SIGTERM)  # what `docker stop` sends: the main process only
        leaving.process.wait(60)
        shutdown_s = time.monotonic() - started
        handed_back = job_view(http, job["id"])
        assert handed_back["status"] == "queued", handed_back  # back in the queue, not lost, not failed
        assert handed_back["iteration"] < 400

        own_stack.start_worker("taker")
        final = wait_state(http, job["id"], TERMINAL, timeout_s=180)
        assert final["status"] == "succeeded" and final["iteration"] == 400
        assert int(own_stack.client.hget(f"{own_stack.prefix}:job:{job['id']}", "resumed_from")) > 0
        assert len(finished_events(own_stack, job["id"])) == 1
        print(f"\nSIGTERM to exit: {shutdown_s:.1f} s; handed back at iteration {handed_back['iteration']}")
        assert shutdown_s < 30


def test_redis_restart_loses_no_job(own_stack: Stack) -> None:
    own_stack.start_worker("steady")
    url = own_stack.start_api()
    with httpx.Client(base_url=url, timeout=30) as http:
        body = {"prompt": "a lantern", "width": 32, "height": 32, "iterations": 120, "cutn": 4}
        ids = [http.post("/v1/jobs", json={**body, "seed": i}).json()["id"] for i in range(5)]
        wait_state(http, ids[0], {"running"})

        answers: list[httpx.Response] = []

        def while_down() -> None:
            time.sleep(0.5)
            answers.append(http.get(f"/v1/jobs/{ids[0]}"))
            answers.append(http.post("/v1/jobs", json=body))

        own_stack.restart_redis(down_s=2.0, during=while_down)
        for answer in answers:
            assert answer.status_code == 503, answer.text  # never a 500 while Redis is away
            assert "retry-after" in answer.headers

        finals = [wait_state(http, job_id, TERMINAL, timeout_s=240) for job_id in ids]
        assert [f["status"] for f in finals] == ["succeeded"] * 5, finals
        assert all(f["iteration"] == 120 for f in finals)


def test_two_hundred_jobs_across_two_workers(own_stack: Stack) -> None:
    for name in ("left", "right"):
        own_stack.start_worker(name)
    url = own_stack.start_api()
    sizes = [(32, 32), (48, 32), (32, 48)]
    count = 200

    def submit(i: int) -> tuple[int, str]:
        width, height = sizes[i % 3]
        body = {"prompt": f"job number {i}", "width": width, "height": height, "iterations": 3, "cutn": 2}
        with httpx.Client(base_url=url, timeout=60) as http:
            response = http.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            return i, response.json()["id"]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        submitted = dict(pool.map(submit, range(count)))
    submit_s = time.monotonic() - started
    assert len(set(submitted.values())) == count

    with httpx.Client(base_url=url, timeout=30) as http:
        finals = {i: wait_state(http, job_id, TERMINAL, timeout_s=600) for i, job_id in submitted.items()}
        total_s = time.monotonic() - started
        states = [f["status"] for f in finals.values()]
        assert states.count("succeeded") == count, {s: states.count(s) for s in set(states)}
        workers = {f["worker"] for f in finals.values()}
        assert len(workers) == 2  # both workers took a share
        for i, final in finals.items():
            assert final["attempts"] == 1  # none ran twice
            assert len(finished_events(own_stack, final["id"])) == 1
            result = Image.open(io.BytesIO(http.get(f"/v1/jobs/{final['id']}/result").content))
            # Its own picture: its size, its prompt, its id.
            assert result.size == sizes[i % 3]
            assert result.text["prompt"] == f"job number {i}" and result.text["job_id"] == final["id"]
            frame = Image.open(io.BytesIO(http.get(f"/v1/jobs/{final['id']}/frame").content))
            assert frame.size == sizes[i % 3]
    waits = [f["started_at"] - f["created_at"] for f in finals.values()]
    print(
        f"\n{count} jobs: submitted in {submit_s:.1f} s, all done in {total_s:.1f} s "
        f"({count / total_s:.1f} jobs/s); queue wait median {statistics.median(waits):.2f} s, "
        f"max {max(waits):.2f} s; 0 lost, 0 duplicated; per worker: "
        + ", ".join(f"{w}: {sum(f['worker'] == w for f in finals.values())}" for w in sorted(workers))
    )
