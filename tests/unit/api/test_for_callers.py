"""The API for the programs that call artgen, against fakeredis: webhook fields, Idempotency-Key,
Cancel-After and deadline_s, Prefer: wait, DELETE and the deliveries list."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.auth import owner_of
from shared.jobs import JobState
from shared.keys import Keys
from shared.storage import DirectoryStore, result_key, timelapse_key
from tests.unit.api.support import KEY_A, KEY_B, PREFIX, FakeWorker, RecordingEnqueuer, png_bytes

KEYS = Keys(PREFIX)
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
BODY = {"prompt": "a red fox", "width": 64, "height": 64, "iterations": 10}
PUBLIC_HOOK = "https://8.8.8.8/hook"


@pytest.fixture
def hooked(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(webhook_secret=SECRET)


def post(client: TestClient, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return client.post("/v1/jobs", json={**BODY, **body}, headers=headers or {})


def field_errors(response: Any) -> list[tuple[str, ...]]:
    assert response.status_code == 422, response.text
    return [tuple(error["loc"]) for error in response.json()["detail"]]


# --- webhook fields ---------------------------------------------------------------------------------


def test_a_webhook_needs_the_deployments_secret(client: TestClient) -> None:
    assert field_errors(post(client, webhook=PUBLIC_HOOK)) == [("body", "webhook")]


def test_webhook_fields_are_kept_and_shown(hooked: TestClient, worker: FakeWorker) -> None:
    job = post(hooked, webhook=PUBLIC_HOOK).json()
    assert job["webhook"] == PUBLIC_HOOK and job["webhook_events_filter"] == ["start", "completed"]
    chosen = post(hooked, webhook=PUBLIC_HOOK, webhook_events_filter=["progress", "completed", "progress"])
    assert chosen.json()["webhook_events_filter"] == ["progress", "completed"]
    assert worker.record(chosen.json()["id"]).webhook_events == "progress,completed"
    plain = post(hooked).json()
    assert plain["webhook"] is None and plain["webhook_events_filter"] is None


def test_bad_webhook_fields_are_422(hooked: TestClient) -> None:
    assert field_errors(post(hooked, webhook="http://10.0.0.8/")) == [("body", "webhook")]
    assert field_errors(post(hooked, webhook="not a url")) == [("body", "webhook")]
    assert field_errors(post(hooked, webhook_events_filter=["completed"])) == [
        ("body", "webhook_events_filter")
    ]
    assert field_errors(post(hooked, webhook=PUBLIC_HOOK, webhook_events_filter=[])) == [
        ("body", "webhook_events_filter")
    ]
    assert field_errors(post(hooked, webhook=PUBLIC_HOOK, webhook_events_filter=["finished"]))[0][:2] == (
        "body",
        "webhook_events_filter",
    )


def test_a_form_takes_webhook_fields_too(hooked: TestClient, worker: FakeWorker) -> None:
    form = {"prompt": "a cat", "webhook": PUBLIC_HOOK, "webhook_events_filter": "start,progress"}
    response = hooked.post("/v1/jobs", data=form)
    assert response.status_code == 202, response.text
    assert worker.record(response.json()["id"]).webhook_events == "start,progress"


def test_ends_the_api_makes_announce_completed(
    hooked: TestClient, worker: FakeWorker, enqueuer: RecordingEnqueuer
) -> None:
    job_id = post(hooked, webhook=PUBLIC_HOOK).json()["id"]
    assert hooked.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    assert enqueuer.announced == [(job_id, "completed", f"msg_{job_id}_completed")]
    assert hooked.get(f"/v1/jobs/{job_id}").json()["cancel_reason"] == "client"


def test_deliveries_lists_the_attempts(hooked: TestClient, worker: FakeWorker) -> None:
    job_id = post(hooked, webhook=PUBLIC_HOOK).json()["id"]
    assert hooked.get(f"/v1/jobs/{job_id}/deliveries").json() == {"deliveries": []}
    attempt = {
        "webhook_id": f"msg_{job_id}_start",
        "event": "start",
        "attempt": 1,
        "at": time.time(),
        "duration_s": 0.1,
        "outcome": "retrying",
        "status_code": 503,
        "error": "HTTP 503",
        "worker": "webhooks@h",
    }
    worker.client.rpush(KEYS.deliveries(job_id), json.dumps(attempt))
    assert hooked.get(f"/v1/jobs/{job_id}/deliveries").json() == {"deliveries": [attempt]}


# --- Idempotency-Key --------------------------------------------------------------------------------


def test_the_same_key_and_body_return_the_first_job(client: TestClient, enqueuer: RecordingEnqueuer) -> None:
    first = post(client, {"Idempotency-Key": "k-1"})
    again = post(client, {"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert again.json()["id"] == first.json()["id"] and len(enqueuer.sent) == 1
    assert again.headers["location"] == f"/v1/jobs/{first.json()['id']}"


def test_the_same_key_with_another_body_is_422(client: TestClient) -> None:
    assert post(client, {"Idempotency-Key": "k-2"}).status_code == 202
    other = post(client, {"Idempotency-Key": "k-2"}, iterations=11)
    assert field_errors(other) == [("header", "Idempotency-Key")]
    # Another Cancel-After is another request too.
    assert post(client, {"Idempotency-Key": "k-2", "Cancel-After": "5m"}).status_code == 422


def test_keys_belong_to_their_api_key(make_client: Callable[..., TestClient]) -> None:
    keyed = make_client(api_keys=[KEY_A, KEY_B])
    a = post(keyed, {"Idempotency-Key": "same", "X-API-Key": KEY_A})
    b = post(keyed, {"Idempotency-Key": "same", "X-API-Key": KEY_B})
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]


def test_a_refused_request_lets_go_of_its_key(
    make_client: Callable[..., TestClient], enqueuer: RecordingEnqueuer
) -> None:
    client = make_client(max_queue_depth=1)
    blocker = post(client).json()
    assert post(client, {"Idempotency-Key": "k-3"}).status_code == 429  # the queue is full
    assert client.post(f"/v1/jobs/{blocker['id']}/cancel").status_code == 202
    retried = post(client, {"Idempotency-Key": "k-3"})
    assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers


def test_a_bad_key_is_422(client: TestClient) -> None:
    assert field_errors(post(client, {"Idempotency-Key": "x" * 256})) == [("header", "Idempotency-Key")]


def test_the_original_api_takes_idempotency_keys(client: TestClient, enqueuer: RecordingEnqueuer) -> None:
    url = "/v1/generate_text2img?prompt=a%20fox&width=64&height=64&wait=false"
    first = client.post(url, headers={"Idempotency-Key": "orig-1"})
    again = client.post(url, headers={"Idempotency-Key": "orig-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert len(enqueuer.sent) == 1
    other = client.post(url.replace("a%20fox", "a%20cat"), headers={"Idempotency-Key": "orig-1"})
    assert other.status_code == 422


# --- deadlines --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400)])
def test_cancel_after_sets_the_deadline(client: TestClient, header: str, seconds: int) -> None:
    before = time.time()
    job = post(client, {"Cancel-After": header}).json()
    assert before + seconds <= job["deadline_at"] <= time.time() + seconds


@pytest.mark.parametrize("header", ["", "30", "5 minutes", "1m1h", "0s", "-5s", "9999999h"])
def test_bad_cancel_after_is_422(client: TestClient, header: str) -> None:
    assert field_errors(post(client, {"Cancel-After": header})) == [("header", "Cancel-After")]


def test_deadline_s_and_the_default(make_client: Callable[..., TestClient], client: TestClient) -> None:
    assert post(client, deadline_s=60).json()["deadline_at"] == pytest.approx(time.time() + 60, abs=5)
    assert post(client).json()["deadline_at"] is None
    assert field_errors(post(client, {"Cancel-After": "1m"}, deadline_s=60)) == [("header", "Cancel-After")]
    assert field_errors(post(client, deadline_s=0)) == [("body", "deadline_s")]
    defaulted = make_client(default_deadline_s=120)
    assert post(defaulted).json()["deadline_at"] == pytest.approx(time.time() + 120, abs=5)


def test_a_queued_job_read_past_its_deadline_is_canceled(
    client: TestClient, worker: FakeWorker, enqueuer: RecordingEnqueuer
) -> None:
    job_id = post(client, deadline_s=0.2).json()["id"]
    time.sleep(0.3)
    view = client.get(f"/v1/jobs/{job_id}").json()
    assert (view["status"], view["cancel_reason"], view["started_at"]) == ("canceled", "deadline", None)
    assert worker.client.zscore(KEYS.queued("artgen.tiny"), job_id) is None
    assert worker.client.zscore(KEYS.deadlines(), job_id) is None
    assert client.get("/v1/jobs").json()["jobs"][0]["status"] == "canceled"


# --- Prefer: wait -----------------------------------------------------------------------------------


def test_prefer_wait_answers_201_with_the_final_job(client: TestClient, worker: FakeWorker) -> None:
    def finish_soon() -> None:
        job_id = wait_for_job(worker)
        worker.start(job_id)
        time.sleep(0.2)
        worker.finish(job_id, result=png_bytes())

    helper = threading.Thread(target=finish_soon)
    helper.start()
    response = post(client, {"Prefer": "respond-async, wait=5"})
    helper.join()
    assert response.status_code == 201, response.text
    assert response.headers["preference-applied"] == "wait=5"
    assert response.json()["status"] == "succeeded"


def wait_for_job(worker: FakeWorker) -> str:
    for _ in range(200):
        ids = worker.client.zrange(KEYS.recent(), 0, -1)
        if ids:
            return str(ids[-1].decode())
        time.sleep(0.01)
    raise AssertionError("no job was written")


def test_prefer_wait_answers_202_when_the_job_runs_on(client: TestClient) -> None:
    started = time.monotonic()
    response = post(client, {"Prefer": "wait=1"})
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert 1.0 <= time.monotonic() - started < 5
    assert post(client, {"Prefer": "return=minimal"}).status_code == 202  # other preferences: ignored


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=abc", "wait=1.5"])
def test_a_bad_wait_is_422(client: TestClient, prefer: str) -> None:
    assert field_errors(post(client, {"Prefer": prefer})) == [("header", "Prefer")]


# --- DELETE -----------------------------------------------------------------------------------------


def every_trace(worker: FakeWorker, results: DirectoryStore, job_id: str) -> list[str]:
    redis = worker.client
    found = [key.decode() for key in redis.scan_iter(match=f"*{job_id}*")]
    for key in redis.scan_iter(match=f"{PREFIX}:*"):
        kind = redis.type(key)
        if (kind == b"zset" and redis.zscore(key, job_id) is not None) or (
            kind == b"set" and redis.sismember(key, job_id)
        ):
            found.append(key.decode())
    found += [str(path) for path in results.root.rglob("*") if job_id in str(path)]
    return found


def test_delete_removes_every_trace(hooked: TestClient, worker: FakeWorker, results: DirectoryStore) -> None:
    image = base64.b64encode(png_bytes()).decode()
    headers = {"Idempotency-Key": "del-1", "Cancel-After": "1h"}
    job_id = post(hooked, headers, webhook=PUBLIC_HOOK, init_image=image, image_prompts=[image]).json()["id"]
    worker.start(job_id)
    worker.progress(job_id, 3)
    worker.frame(job_id, png_bytes())
    worker.client.rpush(KEYS.frames(job_id), png_bytes())
    worker.finish(job_id, result=png_bytes())
    worker.client.hset(KEYS.webhooks(job_id), f"msg_{job_id}_start:status", "delivered")
    worker.client.rpush(KEYS.deliveries(job_id), "{}")
    results.put(result_key(job_id), png_bytes(), "image/png")
    results.put(timelapse_key(job_id), b"RIFF", "image/webp")
    assert len(every_trace(worker, results, job_id)) > 10

    assert hooked.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert every_trace(worker, results, job_id) == []
    assert hooked.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert (
        post(hooked, headers, webhook=PUBLIC_HOOK, init_image=image, image_prompts=[image]).status_code == 202
    )


def test_delete_cancels_a_queued_job(client: TestClient, worker: FakeWorker, results: DirectoryStore) -> None:
    job_id = post(client).json()["id"]
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert every_trace(worker, results, job_id) == []


def test_delete_ends_a_running_job_whose_worker_died(
    client: TestClient, worker: FakeWorker, results: DirectoryStore
) -> None:
    job_id = post(client).json()["id"]
    worker.start(job_id)  # running, and no worker holds its lock
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert every_trace(worker, results, job_id) == []


def test_delete_waits_for_a_running_job_to_be_let_go(
    make_client: Callable[..., TestClient], worker: FakeWorker, results: DirectoryStore
) -> None:
    client = make_client(lock_ttl_s=5)
    job_id = post(client).json()["id"]
    worker.start(job_id)
    worker.client.set(KEYS.lock(job_id), "w1")

    def worker_sees_the_cancel() -> None:
        for _ in range(300):
            if worker.client.exists(KEYS.cancel(job_id)):
                break
            time.sleep(0.01)
        time.sleep(0.3)  # the iteration in flight
        worker.finish(job_id, state="canceled")
        worker.client.delete(KEYS.lock(job_id))

    helper = threading.Thread(target=worker_sees_the_cancel)
    helper.start()
    response = client.delete(f"/v1/jobs/{job_id}")
    helper.join()
    assert response.status_code == 204
    assert every_trace(worker, results, job_id) == []


def test_delete_answers_409_while_a_worker_holds_the_job(
    make_client: Callable[..., TestClient], worker: FakeWorker
) -> None:
    client = make_client(lock_ttl_s=5)
    job_id = post(client).json()["id"]
    worker.start(job_id)
    worker.client.set(KEYS.lock(job_id), "w1")  # a worker that never stops
    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 409 and response.headers["retry-after"] == "5"
    assert worker.record(job_id).state is JobState.RUNNING  # nothing removed


def test_another_keys_job_cannot_be_deleted(
    make_client: Callable[..., TestClient], worker: FakeWorker
) -> None:
    keyed = make_client(api_keys=[KEY_A, KEY_B])
    job_id = post(keyed, {"X-API-Key": KEY_A}).json()["id"]
    assert keyed.delete(f"/v1/jobs/{job_id}", headers={"X-API-Key": KEY_B}).status_code == 404
    assert worker.record(job_id).owner == owner_of(KEY_A)
    assert keyed.delete(f"/v1/jobs/{job_id}", headers={"X-API-Key": KEY_A}).status_code == 204


# --- OpenAPI and metrics ----------------------------------------------------------------------------


def test_openapi_documents_the_new_fields_and_headers(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    create = schema["paths"]["/v1/jobs"]["post"]
    headers = {p["name"] for p in create["parameters"] if p["in"] == "header"}
    assert {"Idempotency-Key", "Cancel-After", "prefer"} <= {
        h if h != "Prefer" else "prefer" for h in headers
    }
    assert {"200", "201", "202"} <= set(create["responses"])
    fields = schema["components"]["schemas"]["JobCreate"]["properties"]
    assert {"webhook", "webhook_events_filter", "deadline_s"} <= set(fields)
    view = schema["components"]["schemas"]["JobView"]["properties"]
    assert {"webhook", "webhook_events_filter", "deadline_at", "cancel_reason"} <= set(view)
    assert "delete" in schema["paths"]["/v1/jobs/{job_id}"]
    assert "/v1/jobs/{job_id}/deliveries" in schema["paths"]
    alias = schema["paths"]["/v1/generate_text2img"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in alias["parameters"]}


def test_metrics_count_deliveries_by_outcome(client: TestClient, worker: FakeWorker) -> None:
    worker.client.hincrby(KEYS.stats(), "webhook|delivered", 3)
    worker.client.hincrby(KEYS.stats(), "webhook|retrying", 2)
    text = client.get("/metrics").text
    assert 'artgen_webhook_deliveries_total{outcome="delivered"} 3.0' in text
    assert 'artgen_webhook_deliveries_total{outcome="retrying"} 2.0' in text
    assert 'artgen_webhook_deliveries_total{outcome="refused"} 0.0' in text
