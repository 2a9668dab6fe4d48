"""POST/GET /v1/jobs and the job's sub-resources, against fakeredis."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.auth import ANONYMOUS
from shared.jobs import JobRecord, JobState
from shared.keys import Keys
from shared.model_facts import MODEL_NOTES
from tests.unit.api.support import PREFIX, FakeWorker, RecordingEnqueuer, png_bytes

KEYS = Keys(PREFIX)
Submit = Callable[..., dict[str, Any]]


def test_create_writes_record_indexes_and_enqueues_by_id(
    client: TestClient, worker: FakeWorker, enqueuer: RecordingEnqueuer
) -> None:
    response = client.post(
        "/v1/jobs", json={"prompt": "a red fox", "width": 64, "height": 32, "iterations": 7}
    )
    assert response.status_code == 202
    job = response.json()
    job_id = job["id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert job["status"] == "queued" and job["queue_position"] == 1
    assert job["note"] == MODEL_NOTES["tiny"] and 0 <= job["seed"] < 2**31
    assert enqueuer.sent == [(job_id, "artgen.tiny")]
    record = worker.record(job_id)
    assert (record.state, record.width, record.height, record.iterations, record.owner) == (
        JobState.QUEUED,
        64,
        32,
        7,
        ANONYMOUS,
    )
    assert record.seed == job["seed"] and record.preview_every == 5
    redis = worker.client
    assert 0 < redis.ttl(KEYS.job(job_id)) <= 7 * 24 * 3600
    assert redis.zscore(KEYS.recent(), job_id) == record.created_at
    assert redis.zscore(KEYS.queued("artgen.tiny"), job_id) == record.created_at


def test_explicit_seed_is_kept_and_defaults_apply(client: TestClient, worker: FakeWorker) -> None:
    job = client.post("/v1/jobs", json={"prompt": "a cat", "seed": 1234}).json()
    assert job["seed"] == 1234
    record = worker.record(job["id"])
    assert (record.width, record.height, record.iterations, record.cutn) == (64, 64, 100, 8)


def test_read_job_reports_progress_eta_and_timings(
    client: TestClient, submit: Submit, worker: FakeWorker
) -> None:
    job_id = submit(iterations=40)["id"]
    worker.start(job_id)
    worker.progress(job_id, 10, its=5.0)
    view = client.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "running" and view["queue_position"] is None
    assert view["iteration"] == 10 and view["progress"] == 0.25
    assert view["eta_seconds"] == 6.0 and view["its"] == 5.0 and view["loss"] == 0.5
    assert view["queue_wait_s"] >= 0 and view["run_s"] >= 0 and view["attempts"] == 1
    assert set(view["links"]) == {"self", "frame", "result", "events", "cancel", "deliveries"}


def test_queue_position_counts_from_one(client: TestClient, submit: Submit) -> None:
    ids = [submit()["id"] for _ in range(3)]
    assert [client.get(f"/v1/jobs/{i}").json()["queue_position"] for i in ids] == [1, 2, 3]


class _CommandCounter:
    """Counts the commands the app sends to Redis (its client, wrapped; fakeredis answers them)."""

    def __init__(self, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        redis_client = client.app.state.redis  # type: ignore[attr-defined]
        real = redis_client.execute_command

        async def counting(*args: Any, **options: Any) -> Any:
            self.names.append(str(args[0]).upper())
            return await real(*args, **options)

        monkeypatch.setattr(redis_client, "execute_command", counting)

    def during(self, call: Callable[[], Any]) -> list[str]:
        self.names.clear()
        call()
        return list(self.names)


def test_reading_a_job_or_its_frame_is_one_redis_round_trip(
    client: TestClient, submit: Submit, worker: FakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = submit()["id"], submit()["id"]
    counter = _CommandCounter(client, monkeypatch)
    # The first use loads the scripts into Redis (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA); then one each.
    client.get(f"/v1/jobs/{first}").raise_for_status()
    client.get(f"/v1/jobs/{first}/frame")
    # Queued: the record and the queue position together.
    sent = counter.during(lambda: client.get(f"/v1/jobs/{second}").raise_for_status())
    assert sent == ["EVALSHA"] and client.get(f"/v1/jobs/{second}").json()["queue_position"] == 2
    worker.start(first)
    worker.frame(first, png_bytes(color=(4, 5, 6)))
    assert counter.during(lambda: client.get(f"/v1/jobs/{first}").raise_for_status()) == ["EVALSHA"]
    frame: list[Any] = []
    sent = counter.during(lambda: frame.append(client.get(f"/v1/jobs/{first}/frame")))
    assert sent == ["EVALSHA"] and frame[0].status_code == 200
    etag = frame[0].headers["etag"]
    sent = counter.during(
        lambda: frame.append(client.get(f"/v1/jobs/{first}/frame", headers={"If-None-Match": etag}))
    )
    assert sent == ["EVALSHA"] and frame[1].status_code == 304


def test_reads_survive_redis_forgetting_its_scripts(
    client: TestClient, submit: Submit, worker: FakeWorker
) -> None:
    """After a Redis restart (or SCRIPT FLUSH) the read scripts are loaded again, not a 500."""
    job_id = submit()["id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["queue_position"] == 1
    worker.client.script_flush()
    assert client.get(f"/v1/jobs/{job_id}").json()["queue_position"] == 1
    assert client.get(f"/v1/jobs/{job_id}/frame").json() == {"detail": "no frame yet"}


def test_frame_304_for_any_held_etag_and_only_for_this_jobs(
    client: TestClient, submit: Submit, worker: FakeWorker
) -> None:
    job_id, other = submit()["id"], submit()["id"]
    worker.start(job_id)
    png = png_bytes(color=(7, 8, 9))
    worker.frame(job_id, png)
    worker.frame(job_id, png)
    url = f"/v1/jobs/{job_id}/frame"
    held = f'"{other}-2", W/"{job_id}-1", W/"{job_id}-2"'
    assert client.get(url, headers={"If-None-Match": held}).status_code == 304
    for stale in (f'"{job_id}-1"', f'"{other}-2"', f'"{job_id}-2', "*", f'"{job_id}-"'):
        answer = client.get(url, headers={"If-None-Match": stale})
        assert answer.status_code == 200 and answer.content == png, stale


def test_queue_position_of_a_model_without_a_preset_here(client: TestClient, worker: FakeWorker) -> None:
    """A queued record naming a model this version has no preset for still gets its position."""
    record = JobRecord(
        id="f" * 32, prompt="old", model="retired-model", width=64, height=64, iterations=5, seed=1, cutn=8
    )
    worker.client.hset(KEYS.job(record.id), mapping=record.to_redis())
    worker.client.zadd(KEYS.queued("artgen.retired-model"), {"e" * 32: 1.0, record.id: 2.0})
    view = client.get(f"/v1/jobs/{record.id}").json()
    assert view["status"] == "queued" and view["queue_position"] == 2


def test_unknown_and_malformed_ids(client: TestClient) -> None:
    assert client.get("/v1/jobs/0123456789abcdef0123456789abcdef").status_code == 404
    assert client.get("/v1/jobs/0123456789abcdef0123456789abcdef").json() == {"detail": "job not found"}
    for bad in ("not-a-job", "0123456789ABCDEF0123456789ABCDEF", "1" * 33, "%00"):
        assert client.get(f"/v1/jobs/{bad}").status_code in (404, 422)
        assert client.post(f"/v1/jobs/{bad}/cancel").status_code in (404, 422)


def test_frame_etag_and_304(client: TestClient, submit: Submit, worker: FakeWorker) -> None:
    job_id = submit()["id"]
    missing = client.get(f"/v1/jobs/{job_id}/frame")
    assert missing.status_code == 404 and missing.json() == {"detail": "no frame yet"}
    worker.start(job_id)
    first = png_bytes(color=(1, 2, 3))
    worker.frame(job_id, first)
    response = client.get(f"/v1/jobs/{job_id}/frame")
    assert response.status_code == 200 and response.content == first
    assert response.headers["content-type"] == "image/png"
    etag = response.headers["etag"]
    assert etag == f'"{job_id}-1"'
    unchanged = client.get(f"/v1/jobs/{job_id}/frame", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    second = png_bytes(color=(9, 9, 9))
    worker.frame(job_id, second)
    changed = client.get(f"/v1/jobs/{job_id}/frame", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.content == second
    assert changed.headers["etag"] == f'"{job_id}-2"'


def test_result_is_409_until_succeeded(client: TestClient, submit: Submit, worker: FakeWorker) -> None:
    job_id = submit()["id"]
    early = client.get(f"/v1/jobs/{job_id}/result")
    assert early.status_code == 409 and "queued" in early.json()["detail"]
    worker.start(job_id)
    assert "running" in client.get(f"/v1/jobs/{job_id}/result").json()["detail"]
    final = png_bytes(color=(5, 6, 7))
    worker.finish(job_id, "succeeded", result=final)
    response = client.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 200 and response.content == final
    assert response.headers["content-type"] == "image/png"


def test_cancel_queued_job(client: TestClient, submit: Submit, worker: FakeWorker) -> None:
    job_id = submit()["id"]
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "canceled" and response.json()["finished_at"] is not None
    redis = worker.client
    assert redis.get(KEYS.cancel(job_id)) == b"1" and redis.ttl(KEYS.cancel(job_id)) > 0
    assert redis.zscore(KEYS.queued("artgen.tiny"), job_id) is None
    ((_, fields),) = redis.xrange(KEYS.events(job_id))
    assert fields[b"event"] == b"finished"
    assert json.loads(fields[b"data"]) == {"state": "canceled", "error": None}
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "canceled" in again.json()["detail"]


def test_cancel_running_job_sets_the_flag_only(
    client: TestClient, submit: Submit, worker: FakeWorker
) -> None:
    job_id = submit()["id"]
    worker.start(job_id)
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "running"
    assert worker.client.get(KEYS.cancel(job_id)) == b"1"
    assert worker.client.xlen(KEYS.events(job_id)) == 0  # the worker announces the end itself
    worker.finish(job_id, "canceled")
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_list_newest_first_with_paging(client: TestClient, submit: Submit) -> None:
    ids = [submit()["id"] for _ in range(4)]
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2] and page["total"] == 4
    rest = client.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert [j["id"] for j in rest["jobs"]] == ids[::-1][2:]
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "x"}, {"offset": 10**30}):
        assert client.get("/v1/jobs", params=bad).status_code == 422


def test_queue_depth_bound_is_429_with_retry_after(
    make_client: Callable[..., TestClient], enqueuer: RecordingEnqueuer
) -> None:
    client = make_client(max_queue_depth=2)
    body = {"prompt": "a cat", "iterations": 3}
    assert [client.post("/v1/jobs", json=body).status_code for _ in range(2)] == [202, 202]
    refused = client.post("/v1/jobs", json=body)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert "full" in refused.json()["detail"] and len(enqueuer.sent) == 2


def test_enqueue_failure_marks_the_job_failed_and_answers_503(
    client: TestClient, enqueuer: RecordingEnqueuer, worker: FakeWorker
) -> None:
    enqueuer.fail = True
    response = client.post("/v1/jobs", json={"prompt": "a cat"})
    assert response.status_code == 503 and response.headers["retry-after"]
    job_id = response.headers["x-job-id"]
    record = worker.record(job_id)
    assert record.state is JobState.FAILED and "queue" in (record.error or "")
    assert worker.client.zcard(KEYS.queued("artgen.tiny")) == 0
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"


def test_no_model_configured_is_503(make_client: Callable[..., TestClient]) -> None:
    client = make_client(model=None)
    response = client.post("/v1/jobs", json={"prompt": "a cat"})
    assert response.status_code == 503 and "ARTGEN_MODEL" in response.json()["detail"]


def test_worker_models_choose_the_queue(
    make_client: Callable[..., TestClient], enqueuer: RecordingEnqueuer
) -> None:
    client = make_client(model=None, worker_models=["toyworld", "tiny"])
    assert client.post("/v1/jobs", json={"prompt": "a cat"}).json()["model"] == "toyworld"
    assert client.post("/v1/jobs", json={"prompt": "a cat", "model": "tiny"}).status_code == 202
    assert [queue for _, queue in enqueuer.sent] == ["artgen.toyworld", "artgen.tiny"]


def test_multipart_with_init_image_and_image_prompts(client: TestClient, worker: FakeWorker) -> None:
    files = [
        ("init_image", ("red.jpg", png_bytes((40, 24), fmt="JPEG"), "image/jpeg")),
        ("image_prompts", ("p0.webp", png_bytes((16, 16), fmt="WEBP"), "image/webp")),
        ("image_prompts", ("p1.png", png_bytes((16, 16)), "image/png")),
    ]
    data = {
        "prompt": "a red square",
        "width": "64",
        "height": "64",
        "iterations": "4",
        "init_weight": "1.0",
        "seed": "",
    }
    response = client.post("/v1/jobs", data=data, files=files)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    record = worker.record(job_id)
    assert record.has_init_image and record.image_prompt_count == 2 and record.init_weight == 1.0
    stored = worker.client.get(KEYS.init_image(job_id))
    assert stored is not None and stored.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(stored)) as picture:  # the uploaded picture itself, as RGB
        assert picture.size == (40, 24) and picture.mode == "RGB"
        red, green, blue = picture.getpixel((20, 12))
        assert red > 180 and green < 60 and blue < 60
    for index in range(2):
        assert worker.client.get(KEYS.image_prompt(job_id, index)).startswith(b"\x89PNG")
        assert worker.client.ttl(KEYS.image_prompt(job_id, index)) > 0


def test_json_with_base64_init_image(client: TestClient, worker: FakeWorker) -> None:
    encoded = base64.b64encode(png_bytes((20, 20))).decode()
    body = {"prompt": "a fox", "init_image": f"data:image/png;base64,{encoded}", "init_weight": 0.5}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    record = JobRecord.from_redis(worker.client.hgetall(KEYS.job(response.json()["id"])))
    assert record.has_init_image and record.image_prompt_count == 0


def test_a_job_that_leaves_parameters_out_gets_its_models_defaults(
    make_client: Callable[..., TestClient], worker: FakeWorker
) -> None:
    client = make_client(model="toyworld", default_size=None, default_cutn=None)
    job = client.post("/v1/jobs", json={"prompt": "a red circle"}).json()
    record = worker.record(job["id"])
    assert (record.width, record.height, record.iterations, record.cutn) == (128, 128, 200, 16)  # max_cutn 16
    assert job["note"] == MODEL_NOTES["toyworld"]
