"""GET /v1/jobs/{id}/events: a snapshot, then the stream's events, closing after `finished`."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from fastapi.testclient import TestClient

from shared.jobs import EventType
from tests.unit.api.support import FakeWorker, png_bytes


def _events(client: TestClient, job_id: str, headers: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                out.append((event, json.loads(line.split(":", 1)[1])))
    return out


def test_stream_follows_the_job_and_closes_after_finished(
    client: TestClient, submit: Any, worker: FakeWorker
) -> None:
    job_id = submit(iterations=3)["id"]

    def play() -> None:
        time.sleep(0.2)
        worker.start(job_id)
        for iteration in (1, 2, 3):
            worker.progress(job_id, iteration)
        worker.frame(job_id, png_bytes(), iteration=3)
        worker.finish(job_id, "succeeded", result=png_bytes())

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    events = _events(client, job_id)
    thread.join()
    names = [name for name, _ in events]
    assert names == ["snapshot", "progress", "progress", "progress", "frame", "finished"]
    assert events[0][1]["id"] == job_id and events[0][1]["status"] == "queued"
    assert [data["iteration"] for name, data in events if name == "progress"] == [1, 2, 3]
    assert events[-1][1] == {"state": "succeeded", "error": None}


def test_events_written_before_connecting_are_not_replayed(
    client: TestClient, submit: Any, worker: FakeWorker
) -> None:
    job_id = submit()["id"]
    worker.start(job_id)
    worker.progress(job_id, 4)

    def finish_later() -> None:
        time.sleep(0.2)
        worker.progress(job_id, 5)
        worker.finish(job_id, "failed", error="boom")

    thread = threading.Thread(target=finish_later, daemon=True)
    thread.start()
    events = _events(client, job_id)
    thread.join()
    assert events[0][1]["iteration"] == 4  # the snapshot already holds iteration 4
    assert [name for name, _ in events] == ["snapshot", "progress", "finished"]
    assert events[-1][1] == {"state": "failed", "error": "boom"}


def test_terminal_job_gets_snapshot_and_finished_at_once(
    client: TestClient, submit: Any, worker: FakeWorker
) -> None:
    job_id = submit()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    events = _events(client, job_id)
    assert [name for name, _ in events] == ["snapshot", "finished"]
    assert events[0][1]["status"] == "canceled" and events[1][1]["state"] == "canceled"


def test_last_event_id_resumes_after_that_event(client: TestClient, submit: Any, worker: FakeWorker) -> None:
    job_id = submit()["id"]
    worker.start(job_id)
    worker.progress(job_id, 1)
    first_id = worker.client.xrange(worker.keys.events(job_id))[0][0].decode()
    worker.progress(job_id, 2)
    worker.event(job_id, EventType.FINISHED, {"state": "succeeded", "error": None})
    events = _events(client, job_id, headers={"Last-Event-ID": first_id})
    assert [(n, d.get("iteration")) for n, d in events] == [
        ("snapshot", 2),
        ("progress", 2),
        ("finished", None),
    ]


def test_unknown_job_events_is_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/0123456789abcdef0123456789abcdef/events").status_code == 404
