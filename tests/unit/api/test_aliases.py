"""The original API's services over the same jobs; a thread plays the worker while the call blocks."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

from fastapi.testclient import TestClient
from PIL import Image

from tests.unit.api.support import FakeWorker, RecordingEnqueuer, png_bytes


def _play_worker(
    enqueuer: RecordingEnqueuer, worker: FakeWorker, state: str, error: str = ""
) -> threading.Thread:
    """Once the API has enqueued a job, run it to `state` the way a worker would."""

    def run() -> None:
        deadline = time.monotonic() + 5
        while not enqueuer.sent:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        job_id = enqueuer.sent[-1][0]
        worker.start(job_id)
        worker.progress(job_id, 1)
        worker.frame(job_id, png_bytes((64, 64), (0, 0, 255)))
        result = png_bytes((64, 64), (0, 255, 0)) if state == "succeeded" else None
        worker.finish(job_id, state, result=result, error=error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_text2img_blocks_and_answers_jpeg(
    client: TestClient, enqueuer: RecordingEnqueuer, worker: FakeWorker
) -> None:
    thread = _play_worker(enqueuer, worker, "succeeded")
    response = client.post(
        "/v1/generate_text2img", params={"prompt": "a lighthouse", "width": 64, "height": 64}
    )
    thread.join()
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    job_id = response.headers["x-job-id"]
    assert enqueuer.sent == [(job_id, "artgen.tiny")]
    picture = Image.open(io.BytesIO(response.content))
    assert picture.format == "JPEG" and picture.size == (64, 64)
    red, green, blue = picture.convert("RGB").getpixel((32, 32))
    assert green > 200 and red < 50 and blue < 50  # the result, not the (blue) frame


def test_text2img_failed_job_is_502(
    client: TestClient, enqueuer: RecordingEnqueuer, worker: FakeWorker
) -> None:
    thread = _play_worker(enqueuer, worker, "failed", error="out of memory")
    response = client.post("/v1/generate_text2img", params={"prompt": "a cat"})
    thread.join()
    assert response.status_code == 502 and response.json()["detail"] == "worker failed: out of memory"
    assert response.headers["x-job-id"] == enqueuer.sent[0][0]


def test_text2img_canceled_job_is_409(
    client: TestClient, enqueuer: RecordingEnqueuer, worker: FakeWorker
) -> None:
    thread = _play_worker(enqueuer, worker, "canceled")
    response = client.post("/v1/generate_text2img", params={"prompt": "a cat"})
    thread.join()
    assert response.status_code == 409 and "canceled" in response.json()["detail"]


def test_text2img_timeout_is_504_with_the_job_id(make_client: Callable[..., TestClient]) -> None:
    client = make_client(blocking_timeout_s=0.3)
    started = time.monotonic()
    response = client.post("/v1/generate_text2img", params={"prompt": "a cat"})
    assert response.status_code == 504 and time.monotonic() - started < 3
    job_id = response.headers["x-job-id"]
    assert job_id in response.json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"  # still there, still coming


def test_text2img_validates_like_jobs(client: TestClient, enqueuer: RecordingEnqueuer) -> None:
    assert client.post("/v1/generate_text2img", params={"prompt": "a cat", "width": 50}).status_code == 422
    assert client.post("/v1/generate_text2img", params={"prompt": "a cat", "width": "x"}).status_code == 422
    assert client.post("/v1/generate_text2img", params={"prompt": "a:1.2.3"}).status_code == 422
    assert client.post("/v1/generate_text2img").status_code == 422
    assert enqueuer.sent == []


def test_wait_false_answers_202_with_the_job(client: TestClient, worker: FakeWorker) -> None:
    response = client.post(
        "/v1/generate_text2img", params={"prompt": "a cat", "wait": "false", "iterations": 7, "seed": 3}
    )
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued" and job["iterations"] == 7 and job["seed"] == 3
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"


def test_textimg2img_stores_the_start_picture(client: TestClient, worker: FakeWorker) -> None:
    start = png_bytes((48, 48), (10, 200, 10), fmt="JPEG")
    response = client.post(
        "/v1/generate_textimg2img",
        params={"prompt": "green fields", "width": 64, "height": 64, "wait": "false"},
        files={"image": ("g.jpg", start, "image/jpeg")},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert worker.record(job_id).has_init_image
    assert worker.client.get(worker.keys.init_image(job_id)).startswith(b"\x89PNG")
    bad = client.post(
        "/v1/generate_textimg2img",
        params={"prompt": "x", "wait": "false"},
        files={"image": ("g.txt", b"not a picture", "text/plain")},
    )
    assert bad.status_code == 422
    assert client.post("/v1/generate_textimg2img", params={"prompt": "x"}).status_code == 422


def test_progress_services_default_to_the_latest_job(client: TestClient, worker: FakeWorker) -> None:
    for method in ("GET", "POST"):
        assert client.request(method, "/v1/generate_text2img_progressbar").status_code == 404
        assert client.request(method, "/v1/generate_text2img_progressimg").status_code == 404
    first = client.post("/v1/generate_text2img", params={"prompt": "a", "wait": "false"}).json()["id"]
    latest = client.post("/v1/generate_text2img", params={"prompt": "b", "wait": "false"}).json()["id"]
    worker.start(latest)
    worker.progress(latest, 37)
    for method in ("GET", "POST"):
        bar = client.request(method, "/v1/generate_text2img_progressbar")
        assert bar.status_code == 200 and bar.json() == "37" and bar.headers["x-job-id"] == latest
        assert (
            client.request(method, "/v1/generate_text2img_progressbar", params={"job_id": first}).json()
            == "0"
        )
        no_frame = client.request(method, "/v1/generate_text2img_progressimg")
        assert no_frame.status_code == 404 and no_frame.json()["detail"] == "no frame yet"
    worker.frame(latest, png_bytes((64, 64)))
    for method in ("GET", "POST"):
        img = client.request(method, "/v1/generate_text2img_progressimg")
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(img.content)).format == "JPEG"
    assert client.get("/v1/generate_text2img_progressbar", params={"job_id": "bad"}).status_code == 422
    unknown = "0123456789abcdef0123456789abcdef"
    assert client.get("/v1/generate_text2img_progressbar", params={"job_id": unknown}).status_code == 404
