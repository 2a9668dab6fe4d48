"""End to end through real HTTP, a real redis-server and a real Celery worker process (tiny model)."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.integration

TERMINAL = {"succeeded", "failed", "canceled"}


def submit(http: httpx.Client, **params: Any) -> dict[str, Any]:
    body = {"prompt": "flowering magenta orchids", "width": 64, "height": 64, "iterations": 10, "cutn": 4}
    body.update(params)
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def wait_until(http: httpx.Client, job_id: str, states: set[str], timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {timeout_s} s"
        time.sleep(0.05)


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


class Watcher(threading.Thread):
    """Polls a job's progress and frame as fast as it can, recording every observation."""

    def __init__(self, base_url: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.job_id = job_id
        self.iterations: list[int] = []
        self.frame_sizes: set[tuple[int, int]] = set()
        self.frames_before_end = 0
        self.final: dict[str, Any] = {}

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as http:
            while True:
                job = http.get(f"/v1/jobs/{self.job_id}").json()
                self.iterations.append(job["iteration"])
                frame = http.get(f"/v1/jobs/{self.job_id}/frame")
                if frame.status_code == 200:
                    self.frame_sizes.add(png(frame.content).size)
                    if job["status"] not in TERMINAL:
                        self.frames_before_end += 1
                if job["status"] in TERMINAL:
                    self.final = job
                    return
                time.sleep(0.01)


def test_text2img_end_to_end(http: httpx.Client, api_url: str) -> None:
    job = submit(http, iterations=30, seed=1234)
    assert job["status"] == "queued"
    assert job["seed"] == 1234
    watcher = Watcher(api_url, job["id"])
    watcher.start()
    watcher.join(120)

    final = watcher.final
    assert final["status"] == "succeeded", final
    assert final["iteration"] == final["iterations"] == 30
    assert final["progress"] == 1.0
    assert final["model"] == "tiny" and "untrained demo model" in final["note"]
    # Progress only moves forward, and a frame was visible while the job was still running.
    assert watcher.iterations == sorted(watcher.iterations)
    assert watcher.frames_before_end >= 1
    result = http.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200
    image = png(result.content)
    assert image.size == (64, 64)
    assert image.text["seed"] == "1234" and image.text["prompt"] == "flowering magenta orchids"


def test_textimg2img_uses_the_start_picture(http: httpx.Client) -> None:
    def paint_from(colour: tuple[int, int, int] | None) -> bytes:
        data = {"prompt": "a red square", "width": "64", "height": "64", "iterations": "4", "seed": "5"}
        files = {}
        if colour is not None:
            start = io.BytesIO()
            Image.new("RGB", (80, 80), colour).save(start, format="PNG")
            files = {"init_image": ("start.png", start.getvalue(), "image/png")}
            data["init_weight"] = "1.0"
        response = http.post("/v1/jobs", data=data, files=files or None)
        assert response.status_code == 202, response.text
        job = wait_until(http, response.json()["id"], TERMINAL)
        assert job["status"] == "succeeded", job
        return png(http.get(f"/v1/jobs/{job['id']}/result").content).tobytes()

    # The untrained tiny VQGAN cannot reproduce a picture's colours, but the same seed from different
    # start pictures (or none) must give different results: the start picture reached the engine.
    red, blue, none = paint_from((250, 20, 20)), paint_from((20, 20, 250)), paint_from(None)
    assert red != blue and red != none and blue != none


def test_two_jobs_at_once_never_mix(http: httpx.Client, api_url: str) -> None:
    a = submit(http, width=64, height=64, iterations=40, seed=1)
    b = submit(http, width=48, height=32, iterations=60, seed=2)
    watchers = [Watcher(api_url, a["id"]), Watcher(api_url, b["id"])]
    for watcher in watchers:
        watcher.start()
    for watcher in watchers:
        watcher.join(180)
    wa, wb = watchers
    assert wa.final["status"] == wb.final["status"] == "succeeded"
    # Each job's frames have its own size and its progress never passes its own total.
    assert wa.frame_sizes == {(64, 64)}
    assert wb.frame_sizes == {(48, 32)}
    assert max(wa.iterations) == 40 and max(wb.iterations) == 60
    assert wa.iterations == sorted(wa.iterations) and wb.iterations == sorted(wb.iterations)
    # They really ran side by side (two pool slots), not one after the other.
    assert (
        wa.final["started_at"] < wb.final["finished_at"] and wb.final["started_at"] < wa.final["finished_at"]
    )


def test_cancel_running_job_stops_it(http: httpx.Client) -> None:
    job = submit(http, iterations=1000, width=64, height=64)
    running = wait_until(http, job["id"], {"running"} | TERMINAL)
    assert running["status"] == "running"
    wait_for_iteration = time.monotonic() + 30
    while http.get(f"/v1/jobs/{job['id']}").json()["iteration"] < 3:
        assert time.monotonic() < wait_for_iteration
        time.sleep(0.05)
    response = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202, response.text
    final = wait_until(http, job["id"], TERMINAL, timeout_s=30)
    assert final["status"] == "canceled"
    assert final["iteration"] < 1000
    assert http.get(f"/v1/jobs/{job['id']}/result").status_code == 409


def test_cancel_queued_job_never_starts(http: httpx.Client) -> None:
    # Fill both pool slots with long jobs so that the third one waits in the queue. All three are of
    # different picture sizes: a job of a running job's size could join its batch instead (batching is on
    # by default), the second blocker taking no slot of its own or the third not waiting.
    blockers = [submit(http, iterations=1000, width=64, height=h) for h in (64, 48)]
    for blocker in blockers:
        wait_until(http, blocker["id"], {"running"})
    queued = submit(http, iterations=5, width=48, height=32)
    for blocker in blockers:
        assert http.get(f"/v1/jobs/{blocker['id']}").json()["batch"] in (None, 1)  # each in its own slot
    view = http.get(f"/v1/jobs/{queued['id']}").json()
    assert view["status"] == "queued" and view["queue_position"] == 1
    assert http.post(f"/v1/jobs/{queued['id']}/cancel").status_code == 202
    for blocker in blockers:
        http.post(f"/v1/jobs/{blocker['id']}/cancel")
    for blocker in blockers:
        wait_until(http, blocker["id"], TERMINAL)
    time.sleep(1.0)  # the worker has now taken the canceled job's message off the queue
    final = http.get(f"/v1/jobs/{queued['id']}").json()
    assert final["status"] == "canceled"
    assert final["started_at"] is None and final["iteration"] == 0
    assert http.get(f"/v1/jobs/{queued['id']}/frame").status_code == 404


def test_original_api_aliases(http: httpx.Client) -> None:
    # It answers once the job is done: few iterations, and time to spare on a loaded machine.
    response = http.post(
        "/v1/generate_text2img",
        params={"prompt": "a lighthouse", "width": 64, "height": 64, "iterations": 20},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    job_id = response.headers["x-job-id"]
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)
    # Without a job id the progress services describe the most recent job, as the original did.
    for method in ("GET", "POST"):
        bar = http.request(method, "/v1/generate_text2img_progressbar")
        assert bar.status_code == 200 and bar.json() == str(
            http.get(f"/v1/jobs/{job_id}").json()["iteration"]
        )
        img = http.request(method, "/v1/generate_text2img_progressimg", params={"job_id": job_id})
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"

    start = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(start, format="JPEG")
    response = http.post(
        "/v1/generate_textimg2img",
        params={"prompt": "green fields", "width": 64, "height": 64, "wait": "false"},
        files={"image": ("g.jpg", start.getvalue(), "image/jpeg")},
    )
    assert response.status_code == 202, response.text
    assert wait_until(http, response.json()["id"], TERMINAL)["status"] == "succeeded"


def test_unknown_job_is_404(http: httpx.Client) -> None:
    assert http.get("/v1/jobs/0123456789abcdef0123456789abcdef").status_code == 404
    assert http.get("/v1/jobs/not-a-job-id").status_code in (404, 422)
    assert http.post("/v1/jobs/0123456789abcdef0123456789abcdef/cancel").status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"width": 50}, "16"),
        ({"width": 4096}, "512"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": 10**12}, "iterations"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "cat:1.2.3"}, "weight"),
        ({"prompt": "x" * 100_000}, "prompt"),
        ({"model": "no-such-model"}, "model"),
        ({"width": "wide"}, "width"),
        ({"cutn": -3}, "cutn"),
    ],
)
def test_bad_input_is_a_clear_4xx(http: httpx.Client, body: dict[str, Any], fragment: str) -> None:
    payload = {"prompt": "a cat", "width": 64, "height": 64, "iterations": 5, **body}
    response = http.post("/v1/jobs", json=payload)
    assert 400 <= response.status_code < 500, response.text
    assert fragment in response.text


def test_events_stream_progress_then_finished(http: httpx.Client, api_url: str) -> None:
    job = submit(http, iterations=80)  # still running when the stream opens, so progress is streamed
    events: list[str] = []
    with (
        httpx.Client(base_url=api_url, timeout=60) as sse,
        sse.stream("GET", f"/v1/jobs/{job['id']}/events") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
    assert "progress" in events and "frame" in events
    assert events[-1] == "finished"


def test_readyz_sees_redis_and_worker(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200


def test_results_outlive_redis(http: httpx.Client, stack: Any) -> None:
    job = submit(http, iterations=6)
    assert wait_until(http, job["id"], TERMINAL)["status"] == "succeeded"
    picture = http.get(f"/v1/jobs/{job['id']}/result").content
    wait_for = time.monotonic() + 30
    while not (stack.root / "results" / job["id"] / "timelapse.webp").exists():  # written after `finished`
        assert time.monotonic() < wait_for
        time.sleep(0.05)
    # Redis loses its copies (expiry, eviction, a restart without AOF): the durable store still has them.
    for key in ("result", "timelapse"):
        stack.client.delete(f"{stack.prefix}:job:{job['id']}:{key}")
    assert http.get(f"/v1/jobs/{job['id']}/result").content == picture
    timelapse = http.get(f"/v1/jobs/{job['id']}/timelapse")
    assert timelapse.status_code == 200 and timelapse.headers["content-type"] == "image/webp"
    assert (stack.root / "results" / job["id"] / "result.png").read_bytes() == picture
