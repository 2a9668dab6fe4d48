"""/healthz, /readyz, /metrics, and the 503 answer while Redis is away."""

from __future__ import annotations

from collections.abc import Callable

import fakeredis
from fastapi.testclient import TestClient

from api.main import create_app
from launch.processes import free_port
from tests.unit.api.support import FakeWorker, RecordingEnqueuer, make_settings


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_needs_a_live_worker(client: TestClient, worker: FakeWorker) -> None:
    none = client.get("/readyz")
    assert none.status_code == 503 and "no worker" in none.json()["detail"]
    worker.heartbeat("old@test", age_s=120)
    stale = client.get("/readyz")
    assert stale.status_code == 503 and "1 known" in stale.json()["detail"]
    worker.client.hset(worker.keys.workers(), "garbage@test", "not json")
    assert client.get("/readyz").status_code == 503
    worker.heartbeat("w1@test")
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "workers": ["w1@test"]}


def test_readyz_without_redis_is_503(enqueuer: RecordingEnqueuer) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings, enqueuer=enqueuer)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503 and "redis" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_redis_down_is_503_with_retry_after_never_500(
    server: fakeredis.FakeServer, make_client: Callable[..., TestClient]
) -> None:
    client = make_client()
    job_id = client.post("/v1/jobs", json={"prompt": "a cat"}).json()["id"]
    server.connected = False
    for method, path in (
        ("POST", "/v1/jobs"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/frame"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/generate_text2img_progressbar"),
        ("GET", "/metrics"),
    ):
        response = client.request(method, path, json={"prompt": "a cat"} if method == "POST" else None)
        assert response.status_code == 503, (path, response.text)
        assert int(response.headers["retry-after"]) > 0
    server.connected = True
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200


def test_metrics_count_jobs_queues_and_requests(
    client: TestClient, submit: object, worker: FakeWorker
) -> None:
    job_ids = [client.post("/v1/jobs", json={"prompt": "a cat"}).json()["id"] for _ in range(3)]
    worker.start(job_ids[0])
    worker.heartbeat()
    client.get(f"/v1/jobs/{job_ids[0]}")
    client.get("/v1/jobs/0123456789abcdef0123456789abcdef")
    text = client.get("/metrics").text
    assert 'artgen_jobs_submitted_total{model="tiny"} 3.0' in text
    assert 'artgen_queue_depth{queue="artgen.tiny"} 2.0' in text
    assert "artgen_jobs_running 1.0" in text
    assert "artgen_workers_alive 1.0" in text
    assert 'artgen_http_requests_total{method="POST",route="/v1/jobs",status="202"} 3.0' in text
    assert 'artgen_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 1.0' in text
    assert job_ids[0] not in text  # routes are counted by template, never by raw path
