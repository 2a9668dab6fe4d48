"""A prompt schedule on the toyworld model through the real stack: `a red picture ^ a blue picture` is red
just before the change and ends blue.

Redis, a Celery worker process serving toyworld and the API over HTTP, as a user runs them. Colours are
measured (the mean of one channel above the larger of the other two), not pixels. Settings: 64x64, 8
cutouts, step 0.1 and 200 iterations changing at 75 give a red lead of about 0.35 at iteration 75 and a
blue lead of about 0.6 at the end for seeds 3 and 4 (in-process runs of the same engine); the thresholds
leave room for other seeds and thread counts.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.keys import Keys
from tests.integration.conftest import Stack

pytestmark = pytest.mark.slow

CHANGE_AT = 75


def lead(png: bytes, channel: int) -> float:
    """How far the picture's mean in `channel` is above the larger of the other two channels' means."""
    means = (
        np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) / 255
    )
    return float(means[channel] - np.delete(means, channel).max())


@pytest.fixture(scope="module")
def toyworld(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    stack = Stack(tmp_path_factory.mktemp("toyworld-stack"), model="toyworld", preview_every="5")
    try:
        stack.start_worker("toy", concurrency=1)
        yield stack, stack.start_api()
    finally:
        stack.close()


def test_a_red_then_blue_story(toyworld: tuple[Stack, str]) -> None:
    stack, url = toyworld
    body = {
        "prompt": "a red picture ^ a blue picture",
        "model": "toyworld",
        "width": 64,
        "height": 64,
        "cutn": 8,
        "step_size": 0.1,
        "iterations": 200,
        "change_every": CHANGE_AT,
        "seed": 3,
    }
    with httpx.Client(base_url=url, timeout=30) as http:
        created = http.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 280
        while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(1)
        assert job["status"] == "succeeded", job
        result = http.get(f"/v1/jobs/{job_id}/result").content

    # The frames as the worker stored them, in order, beside their frame events' iterations.
    keys, client = Keys(stack.prefix), stack.client
    frames = client.lrange(keys.frames(job_id), 0, -1)
    stream = [
        (fields[b"event"].decode(), json.loads(fields[b"data"]))
        for _, fields in client.xrange(keys.events(job_id))
    ]
    iterations = [data["iteration"] for kind, data in stream if kind == "frame"]
    assert len(frames) == len(iterations) and CHANGE_AT in iterations
    before_change = frames[iterations.index(CHANGE_AT)]
    progress = {data["iteration"]: data for kind, data in stream if kind == "progress"}
    assert progress[CHANGE_AT]["stage"]["text"] == "a red picture"
    assert progress[CHANGE_AT + 1]["stage"] == {"index": 1, "count": 2, "text": "a blue picture"}

    red, blue = lead(before_change, 0), lead(result, 2)
    assert red > 0.15, f"the frame at iteration {CHANGE_AT} is not red: red lead {red:.2f}"
    assert blue > 0.3, f"the finished picture is not blue: blue lead {blue:.2f}"
    assert job["stage"] == {"index": 1, "count": 2, "text": "a blue picture"}
    assert [row["text"] for row in job["losses"]] == ["a blue picture"]
    Path(stack.root / "story-before-change.png").write_bytes(before_change)  # for a person to look at
