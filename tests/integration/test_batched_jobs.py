"""Several jobs on one worker process, painted together: a real redis-server, `artgen worker`, HTTP.

The worker has one pool process (concurrency 1), so jobs whose run times overlap were stepped together
as one batch. Each picture must equal the same job painted alone by the engine (same seed, fp32) within
2/255 per pixel.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import Stack

pytestmark = pytest.mark.slow

JOBS = [
    {"prompt": "flowering magenta orchids", "seed": 1, "iterations": 40},
    {"prompt": "a lighthouse at dusk:1|fog:-0.5", "seed": 2, "iterations": 30, "cutn": 6},
    {"prompt": "a quiet harbour", "seed": 3, "iterations": 30},
]
BASE = {"width": 48, "height": 48, "cutn": 4}


@pytest.fixture
def http(tmp_path: Path) -> Iterator[httpx.Client]:
    # Memory fraction 1: jobs this small fit anywhere, and a CI machine short of RAM must not turn
    # batching off for this test (the memory bound has its own unit tests).
    stack = Stack(tmp_path, engine_precision="fp32", batch_size="4", batch_memory_fraction="1")
    try:
        stack.start_worker("batcher", concurrency=1)
        with httpx.Client(base_url=stack.start_api(), timeout=30) as client:
            yield client
    finally:
        stack.close()


def finished(http: httpx.Client, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] not in {"succeeded", "failed", "canceled"}:
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.05)
    return job


def alone(params: dict[str, Any]) -> np.ndarray:
    """The same job painted by the engine in this process, by itself."""
    from worker.engine import GenerationConfig, generate
    from worker.models import load_models
    from worker.runtime import EngineOptions

    job = {**BASE, **params}
    config = GenerationConfig(
        prompts=job["prompt"],
        width=job["width"],
        height=job["height"],
        iterations=job["iterations"],
        seed=job["seed"],
        cutn=job["cutn"],
    )
    models = load_models("tiny", Path("/nonexistent"), "cpu")  # tiny needs no files
    return np.asarray(generate(models, config, options=EngineOptions(precision="fp32")).image, np.int16)


def test_queued_jobs_are_painted_together_and_equal_solo_runs(http: httpx.Client) -> None:
    ids = []
    for params in JOBS:
        response = http.post("/v1/jobs", json={**BASE, **params})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    jobs = [finished(http, job_id) for job_id in ids]

    assert [j["status"] for j in jobs] == ["succeeded"] * 3, [j["error"] for j in jobs]
    assert len({j["worker"] for j in jobs}) == 1
    # One pool process, overlapping run times: they were stepped together.
    first = jobs[0]
    for other in jobs[1:]:
        assert other["started_at"] < first["finished_at"] and first["started_at"] < other["finished_at"]
        assert other["batch"] >= 2
    assert first["batch"] >= 2
    for job, params in zip(jobs, JOBS, strict=True):
        assert job["iteration"] == params["iterations"]
        painted = http.get(f"/v1/jobs/{job['id']}/result")
        assert painted.status_code == 200
        pixels = np.asarray(Image.open(io.BytesIO(painted.content)).convert("RGB"), np.int16)
        assert np.abs(pixels - alone(params)).max() <= 2, job["id"]
