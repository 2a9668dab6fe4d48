"""The painting choices over HTTP: schedules, start, optimiser, plateau; the job view and SSE progress
carry the stage and the per-prompt losses, as the worker's real ProgressReporter writes them."""

from __future__ import annotations

import json
import threading
import time
from itertools import pairwise
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from shared.keys import Keys
from shared.prompts import PromptSpec
from shared.settings import Settings
from tests.unit.api.support import PREFIX, FakeWorker, png_bytes
from worker.engine import StepInfo
from worker.progress import ProgressReporter

KEYS = Keys(PREFIX)


def test_the_choices_are_stored_and_shown(client: TestClient, worker: FakeWorker) -> None:
    body = {
        "prompt": "a seed ^ a sprout ^ a tree",
        "iterations": 12,
        "optimizer": "nadam",
        "init": "gradient",
        "plateau_window": 4,
        "plateau_delta": 0.01,
    }
    job = client.post("/v1/jobs", json=body).json()
    assert (job["optimizer"], job["init"], job["change_every"]) == ("nadam", "gradient", 4)  # 12 // 3
    assert (job["plateau_window"], job["plateau_delta"], job["stopped_at"]) == (4, 0.01, None)
    assert job["stage"] == {"index": 0, "count": 3, "text": "a seed"} and job["losses"] is None
    record = worker.record(job["id"])
    assert (record.optimizer, record.init, record.change_every, record.plateau_window) == (
        "nadam",
        "gradient",
        4,
        4,
    )
    plain = client.post("/v1/jobs", json={"prompt": "a fox"}).json()
    assert (plain["optimizer"], plain["init"], plain["plateau_window"]) == ("adam", None, None)
    assert plain["stage"] == {"index": 0, "count": 1, "text": "a fox"}


def test_a_form_carries_the_choices_too(client: TestClient, worker: FakeWorker) -> None:
    form = {
        "prompt": "a ^ b",
        "iterations": "10",
        "change_every": "6",
        "optimizer": "radam",
        "init": "pixels",
    }
    response = client.post("/v1/jobs", data=form)
    assert response.status_code == 202, response.text
    record = worker.record(response.json()["id"])
    assert (record.change_every, record.optimizer, record.init) == (6, "radam", "pixels")


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"optimizer": "sgd"}, "optimizer", "adam"),
        ({"init": "noise"}, "init", "codes"),
        (
            {"prompt": "a ^ b ^ c", "iterations": 10, "change_every": 5},
            "change_every",
            "never reaches stage 3",
        ),
        ({"prompt": "a ^ b", "change_every": 0}, "change_every", "greater than or equal to 1"),
        ({"prompt": "a ^^ b"}, "prompt", "stage 2 is empty"),
        ({"prompt": "a ^ b", "iterations": 1}, "change_every", "2 prompt stages need at least 2 iterations"),
        ({"plateau_window": 0}, "plateau_window", "greater than or equal to 1"),
        ({"plateau_window": 10, "iterations": 10}, "plateau_window", "from 1 to 9 (got 10)"),
        ({"plateau_delta": -0.5, "plateau_window": 3}, "plateau_delta", "greater than or equal to 0"),
        ({"plateau_delta": 0.5}, "plateau_delta", "plateau_delta needs plateau_window"),
        ({"plateau_delta": "NaN", "plateau_window": 3}, "plateau_delta", "finite"),
    ],
)
def test_bad_choices_are_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str, fragment: str
) -> None:
    response = client.post("/v1/jobs", json={"prompt": "a fox", **body})
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(d["loc"][-1] == field and fragment in d["msg"] for d in details), details


def test_init_with_an_init_image_is_422(client: TestClient) -> None:
    import base64

    picture = base64.b64encode(png_bytes()).decode()
    response = client.post("/v1/jobs", json={"prompt": "a fox", "init": "codes", "init_image": picture})
    assert response.status_code == 422
    assert "give one or the other" in json.dumps(response.json())


def _reporter(worker: FakeWorker, job_id: str, stages: list[str]) -> ProgressReporter:
    settings = Settings(_env_file=None, redis_prefix=PREFIX, model="tiny")
    return ProgressReporter(worker.client, KEYS, job_id, settings, 100, "w1", stages=stages)


def _info(iteration: int, stage: int, specs: list[PromptSpec], terms: list[float]) -> StepInfo:
    return StepInfo(
        iteration=iteration,
        total=4,
        loss=sum(terms),
        losses=terms,
        its=2.0,
        elapsed=1.0,
        image=lambda: Image.new("RGB", (8, 8)),
        stage=stage,
        stages=2,
        specs=specs,
    )


def test_the_view_and_the_stream_show_the_stage_and_per_prompt_losses(
    client: TestClient, submit: Any, worker: FakeWorker
) -> None:
    job_id = submit(prompt="a red picture ^ a blue picture:2|grey:-1", iterations=4)["id"]
    worker.start(job_id)
    reporter = _reporter(worker, job_id, worker.record(job_id).stage_texts)
    second = [PromptSpec("a blue picture", 2.0), PromptSpec("grey", -1.0)]

    def play() -> None:
        time.sleep(0.2)
        reporter(_info(1, 0, [PromptSpec("a red picture")], [0.9]))
        reporter(_info(2, 0, [PromptSpec("a red picture")], [0.8]))
        reporter(_info(3, 1, second, [1.8, -1.1]))
        worker.finish(job_id, "succeeded", result=png_bytes())

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        lines = list(response.iter_lines())
    thread.join()
    reporter.frames.close()
    progress = [json.loads(data[5:]) for event, data in pairwise(lines) if event == "event: progress"]
    assert [p["stage"] for p in progress] == [
        {"index": 0, "count": 2, "text": "a red picture"},
        {"index": 0, "count": 2, "text": "a red picture"},
        {"index": 1, "count": 2, "text": "a blue picture:2|grey:-1"},
    ]
    assert progress[2]["losses"] == [
        {"text": "a blue picture", "weight": 2.0, "distance": 0.9},
        {"text": "grey", "weight": -1.0, "distance": 1.1},
    ]
    view = client.get(f"/v1/jobs/{job_id}").json()
    assert view["stage"] == {"index": 1, "count": 2, "text": "a blue picture:2|grey:-1"}
    assert view["losses"] == progress[2]["losses"] and view["iteration"] == 3


def test_a_plateaued_job_says_where_it_stopped(client: TestClient, submit: Any, worker: FakeWorker) -> None:
    job_id = submit(prompt="a fox", iterations=4, plateau_window=1)["id"]
    worker.start(job_id)
    reporter = _reporter(worker, job_id, ["a fox"])
    info = _info(2, 0, [PromptSpec("a fox")], [0.5])
    info.stages, info.converged = 1, True
    reporter(info)
    reporter.frames.close()
    worker.finish(job_id, "succeeded", result=png_bytes())
    view = client.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "succeeded" and view["stopped_at"] == 2 < view["iterations"]


def test_the_openapi_schema_describes_the_choices(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    props = schema["JobCreate"]["properties"]
    for name in ("optimizer", "init", "change_every", "plateau_window", "plateau_delta"):
        assert props[name].get("description"), name
    assert "`^`" in props["prompt"]["description"]
    assert {"stage", "losses", "stopped_at"} <= set(schema["JobView"]["properties"])
