"""Redis holds only what is live: finished jobs' pictures served from the store once they leave Redis,
and submissions refused (503 + Retry-After) before Redis is full."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fakeredis
import pytest
import redis.exceptions
from fastapi.testclient import TestClient
from PIL import Image

from api.memory import MemoryGauge, RedisMemory
from shared.keys import Keys
from shared.storage import DirectoryStore, result_key, timelapse_key
from tests.unit.api.support import PREFIX, FakeWorker, png_bytes

KEYS = Keys(PREFIX)
Submit = Callable[..., dict[str, Any]]


class _Info:
    """Answers INFO memory as a real Redis would (fakeredis has no INFO)."""

    def __init__(self, used: int, maxmemory: int) -> None:
        self.used, self.maxmemory, self.calls = used, maxmemory, 0

    async def info(self, section: str) -> dict[str, int]:
        assert section == "memory"
        self.calls += 1
        return {"used_memory": self.used, "maxmemory": self.maxmemory}


def _gauge(client: TestClient, used: int, maxmemory: int, high: float = 0.8) -> _Info:
    info = _Info(used, maxmemory)
    client.app.state.memory = MemoryGauge(info, high, max_age_s=0)  # type: ignore[arg-type,attr-defined]
    return info


def _expire_bytes(worker: FakeWorker, job_id: str) -> None:
    """What the finished-bytes TTL does after its seconds: every picture key of the job is gone."""
    for key in KEYS.bytes_for_job(job_id):
        worker.client.delete(key)


# --- finished jobs: pictures from the store -------------------------------------------------------


def test_result_frame_and_timelapse_come_from_the_store_once_redis_let_them_go(
    client: TestClient, submit: Submit, worker: FakeWorker, results: DirectoryStore
) -> None:
    job_id = submit()["id"]
    worker.start(job_id)
    for shade in (10, 200):
        png = png_bytes(color=(shade, 0, 0))
        worker.frame(job_id, png)
        worker.client.rpush(KEYS.frames(job_id), png)
    final = png_bytes(color=(1, 2, 3))
    results.put(result_key(job_id), final, "image/png")
    results.put(timelapse_key(job_id), b"RIFF-stored-webp", "image/webp")
    worker.finish(job_id, "succeeded", result=final)
    _expire_bytes(worker, job_id)

    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200 and result.content == final
    frame = client.get(f"/v1/jobs/{job_id}/frame")
    assert frame.status_code == 200 and frame.content == final, "the final frame is the result"
    assert frame.headers["etag"] == f'"{job_id}-2"'
    timelapse = client.get(f"/v1/jobs/{job_id}/timelapse")
    assert timelapse.status_code == 200 and timelapse.content == b"RIFF-stored-webp"
    jpeg = client.get("/v1/generate_text2img_progressimg", params={"job_id": job_id})
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"


def test_a_timelapse_made_by_the_api_is_stored_and_cached_only_for_the_grace_ttl(
    make_client: Callable[..., TestClient], worker: FakeWorker, results: DirectoryStore
) -> None:
    client = make_client(finished_bytes_ttl_s=120)
    job_id = client.post("/v1/jobs", json={"prompt": "a fox", "iterations": 10}).json()["id"]
    worker.start(job_id)
    for shade in (10, 120, 240):
        png = png_bytes(color=(0, shade, 0))
        worker.frame(job_id, png)
        worker.client.rpush(KEYS.frames(job_id), png)
    client.post(f"/v1/jobs/{job_id}/cancel")
    worker.finish(job_id, "canceled")

    made = client.get(f"/v1/jobs/{job_id}/timelapse")
    assert made.status_code == 200
    assert Image.open(io.BytesIO(made.content)).n_frames == 3
    assert results.get(timelapse_key(job_id)) == made.content, "a canceled job's time-lapse is kept too"
    assert 0 < worker.client.ttl(KEYS.timelapse(job_id)) <= 120

    _expire_bytes(worker, job_id)
    again = client.get(f"/v1/jobs/{job_id}/timelapse")
    assert again.status_code == 200 and again.content == made.content


def test_a_finished_job_without_pictures_left_says_they_expired(
    client: TestClient, submit: Submit, worker: FakeWorker
) -> None:
    job_id = submit()["id"]
    worker.start(job_id)
    worker.frame(job_id, png_bytes())
    worker.finish(job_id, "failed", error="boom")
    _expire_bytes(worker, job_id)
    for path in ("frame", "timelapse"):
        response = client.get(f"/v1/jobs/{job_id}/{path}")
        assert response.status_code == 404 and "expired" in response.json()["detail"], path


def test_ending_a_job_gives_its_bytes_the_short_ttl_and_its_record_the_long_one(
    make_client: Callable[..., TestClient], worker: FakeWorker
) -> None:
    client = make_client(finished_bytes_ttl_s=90, job_ttl_s=7200)
    picture = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(picture, format="PNG")
    files = {"init_image": ("a.png", picture.getvalue(), "image/png")}
    files_and_prompts = [*files.items(), ("image_prompts", ("b.png", picture.getvalue(), "image/png"))]
    job_id = client.post("/v1/jobs", data={"prompt": "a fox"}, files=files_and_prompts).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202  # ended by the API, while queued

    redis_ = worker.client
    for key in (KEYS.init_image(job_id), KEYS.image_prompt(job_id, 0)):
        assert 0 < redis_.ttl(key) <= 90, key
    for key in KEYS.kept_for_job(job_id):
        assert 90 < redis_.ttl(key) <= 7200, key


# --- memory guard ---------------------------------------------------------------------------------


def test_submissions_are_refused_above_the_high_water_mark_before_anything_is_written(
    client: TestClient, worker: FakeWorker
) -> None:
    _gauge(client, used=850, maxmemory=1000)
    before = set(worker.client.keys("*"))
    response = client.post("/v1/jobs", json={"prompt": "a fox"})
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0
    assert "memory" in response.json()["detail"]
    alias = client.post("/v1/generate_text2img", params={"prompt": "a fox", "wait": "false"})
    assert alias.status_code == 503 and "retry-after" in alias.headers
    assert set(worker.client.keys("*")) == before, "a refused submission writes nothing"
    assert 'artgen_jobs_rejected_total{reason="redis_memory_high"} 2.0' in client.get("/metrics").text


def test_below_the_mark_or_without_maxmemory_submissions_go_through(client: TestClient) -> None:
    info = _gauge(client, used=700, maxmemory=1000)
    assert client.post("/v1/jobs", json={"prompt": "a fox"}).status_code == 202
    info.used, info.maxmemory = 10**12, 0  # no maxmemory: the guard is off
    assert client.post("/v1/jobs", json={"prompt": "a fox"}).status_code == 202


def test_readyz_says_degraded_and_metrics_export_memory(client: TestClient, worker: FakeWorker) -> None:
    worker.heartbeat()
    info = _gauge(client, used=900, maxmemory=1000)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert "900 of 1000 bytes" in ready.json()["detail"]
    metrics = client.get("/metrics").text
    assert "artgen_redis_used_memory_bytes 900.0" in metrics
    assert "artgen_redis_maxmemory_bytes 1000.0" in metrics
    info.used = 100
    assert client.get("/readyz").json() == {"status": "ready", "workers": ["w1@test"]}


def test_the_gauge_reads_info_at_most_once_per_max_age() -> None:
    info = _Info(5, 10)
    gauge = MemoryGauge(info, 0.8, max_age_s=60)  # type: ignore[arg-type]

    async def read_many() -> list[RedisMemory]:
        return [await gauge.read() for _ in range(50)]

    # A thread of its own: the browser tests' Playwright keeps an event loop running on the main thread.
    with ThreadPoolExecutor(max_workers=1) as thread:
        readings = thread.submit(asyncio.run, read_many()).result()
    assert info.calls == 1 and readings[-1] == RedisMemory(5, 10, 0.8) and not readings[-1].high


def test_a_redis_without_info_leaves_the_guard_off(client: TestClient) -> None:
    # fakeredis refuses INFO, as a hosted Redis with the command renamed away would.
    assert client.post("/v1/jobs", json={"prompt": "a fox"}).status_code == 202
    assert "artgen_redis_maxmemory_bytes 0.0" in client.get("/metrics").text


def test_a_write_redis_refuses_for_memory_is_a_503(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def full(*_: Any, **__: Any) -> Any:
        raise redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")

    monkeypatch.setattr(fakeredis.FakeAsyncRedis, "zcard", full)
    response = client.post("/v1/jobs", json={"prompt": "a fox"})
    assert response.status_code == 503 and "retry-after" in response.headers


def test_a_result_store_that_does_not_answer_is_a_503(
    client: TestClient,
    submit: Submit,
    worker: FakeWorker,
    results: DirectoryStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = submit()["id"]
    worker.start(job_id)
    worker.finish(job_id, "succeeded", result=png_bytes())
    _expire_bytes(worker, job_id)

    def away(_: str) -> bytes | None:
        raise ConnectionError("the bucket is unreachable")

    monkeypatch.setattr(results, "get", away)
    response = client.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 503 and "retry-after" in response.headers
    assert "result store" in response.json()["detail"]
