"""`artgen api --workers N`: several real uvicorn processes on one port, and /metrics summed over them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Stack, wait_for
from tests.integration.test_metrics import scrape

REQUESTS = 120


def _children(pid: int) -> list[int]:
    """The uvicorn worker processes under `artgen api` (multiprocessing's spawned children; its resource
    tracker aside)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(int(child))
    return out


def _fresh_get(url: str) -> None:
    """One request on a new connection, so that the kernel may hand it to any of the processes."""
    with httpx.Client(base_url=url, timeout=30) as http:
        http.get("/v1/config").raise_for_status()


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    stack = Stack(tmp_path, api_workers="2")
    yield stack  # type: ignore[misc]
    stack.close()


def test_metrics_are_summed_over_the_api_processes(stack: Stack, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stack.env["TMPDIR"] = str(tmp)  # where `artgen api` makes its metrics directory
    url = stack.start_api()
    api = stack.services[-1]
    workers = wait_for(lambda: len(_children(api.pid)) >= 2 and _children(api.pid), 30, "two API processes")
    assert len(workers) == 2
    metrics_dirs = list(tmp.glob("artgen-metrics-*"))
    assert len(metrics_dirs) == 1

    for _ in range(REQUESTS):
        _fresh_get(url)
    jobs = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for seed in range(3):
            response = http.post("/v1/jobs", json={"prompt": "a red circle", "iterations": 5, "seed": seed})
            jobs.append(response.raise_for_status().json()["id"])
    # Both processes counted some of the requests: each wrote its own counter file.
    counting = {path.name for path in metrics_dirs[0].glob("counter_*.db")}
    assert len(counting) >= 2, counting

    key = ("artgen_http_requests_total", (("method", "GET"), ("route", "/v1/config"), ("status", "200")))
    submitted = ("artgen_jobs_submitted_total", (("model", "tiny"),))
    depth = ("artgen_queue_depth", (("queue", "artgen.tiny"),))
    for _ in range(10):  # every scrape, whichever process answers it, sees the whole service
        with httpx.Client(base_url=url, timeout=30) as http:
            samples = scrape(http)
        assert samples[key] == REQUESTS
        assert samples[submitted] == 3
        assert samples[depth] == 3  # a gauge read from Redis: one value, not one per process
        assert not any(dict(labels).get("pid") for _, labels in samples)

    # A new start counts from nothing: its directory is new, and the old one is gone.
    api.stop()
    assert not metrics_dirs[0].exists()
    url = stack.start_api()
    with httpx.Client(base_url=url, timeout=30) as http:
        samples = scrape(http)
    assert samples.get(key, 0.0) == 0.0 and samples.get(submitted, 0.0) == 0.0
    assert samples[depth] == 3
    assert [p.name for p in tmp.glob("artgen-metrics-*")] != [metrics_dirs[0].name]


def test_one_process_keeps_its_metrics_in_memory(stack: Stack, tmp_path: Path) -> None:
    stack.env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "stale")  # ignored with one process
    url = stack.start_api(api_workers="1")
    api = stack.services[-1]
    assert _children(api.pid) == []
    for _ in range(5):
        _fresh_get(url)
    with httpx.Client(base_url=url, timeout=30) as http:
        samples = scrape(http)
    key = ("artgen_http_requests_total", (("method", "GET"), ("route", "/v1/config"), ("status", "200")))
    assert samples[key] == 5
    assert not (tmp_path / "stale").exists()


def test_a_job_read_through_redis_scripts_keeps_every_character(stack: Stack) -> None:
    """GET /v1/jobs/{id} reads the record as JSON made by Redis' Lua (cjson): text survives as written."""
    url = stack.start_api()
    prompt = 'café ☕ "quoted" / slash \\ back\ttab 雪:1 | ünï:-0.5'
    with httpx.Client(base_url=url, timeout=30) as http:
        made = [http.post("/v1/jobs", json={"prompt": prompt, "iterations": 5, "seed": s}) for s in (1, 2)]
        job_id = made[1].raise_for_status().json()["id"]
        view = http.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        frame = http.get(f"/v1/jobs/{job_id}/frame")
    assert view["prompt"] == prompt and view["queue_position"] == 2
    assert {k: v for k, v in view.items() if k != "queue_wait_s"} == {
        k: v for k, v in made[1].json().items() if k != "queue_wait_s"
    }
    assert frame.status_code == 404 and frame.json() == {"detail": "no frame yet"}
