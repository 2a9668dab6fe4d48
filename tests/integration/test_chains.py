"""Extend and manifest end to end: a real redis-server, a real Celery worker, the API over HTTP, and the
`artgen` command line as a subprocess.

One stack for the module, its worker painting one job at a time with no batching, so that every picture
is painted alone (batched kernels may differ in the last bits) and a chain can be compared byte for byte.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.integration.conftest import Stack, wait_for

pytestmark = pytest.mark.integration

TERMINAL = {"succeeded", "failed", "canceled"}
# A large step: the tiny model's codes change within ten iterations, so the property is not trivial.
SMALL = {"prompt": "a red circle", "width": 32, "height": 32, "cutn": 4, "step_size": 0.5, "seed": 4242}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    own = Stack(tmp_path_factory.mktemp("chains"), batch_size="1")
    try:
        own.start_worker("painter", concurrency=1)
        yield own
    finally:
        own.close()


@pytest.fixture(scope="module")
def api_url(stack: Stack) -> str:
    return stack.start_api()


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=60) as client:
        yield client


def done(http: httpx.Client, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in TERMINAL else None

    job = wait_for(ended, timeout_s, f"job {job_id} to end", interval_s=0.1)
    assert job["status"] == "succeeded", job
    return job


def paint(http: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = http.post("/v1/jobs", json={**SMALL, **body})
    assert answer.status_code == 202, answer.text
    return done(http, answer.json()["id"])


def result(http: httpx.Client, job_id: str) -> bytes:
    answer = http.get(f"/v1/jobs/{job_id}/result")
    assert answer.status_code == 200
    return answer.content


def pixels(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        return image.tobytes()


def image_data(png: bytes) -> bytes:
    """The PNG's IDAT chunks: the encoded picture, without the text chunks (job id, manifest)."""
    out, at = b"", 8
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        kind = png[at + 4 : at + 8]
        if kind == b"IDAT":
            out += png[at + 8 : at + 8 + length]
        at += 12 + length
    return out


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_ten_extended_by_ten_is_twenty(http: httpx.Client, optimizer: str) -> None:
    whole = paint(http, iterations=20, optimizer=optimizer)
    parent = paint(http, iterations=10, optimizer=optimizer)
    answer = http.post(f"/v1/jobs/{parent['id']}/extend", json={"iterations": 10})
    assert answer.status_code == 202, answer.text
    child = done(http, answer.json()["id"])
    assert child["parent"] == parent["id"] and child["start_iteration"] == 10
    assert child["iterations"] == child["iteration"] == 20 and child["optimizer"] == optimizer
    assert http.get(f"/v1/jobs/{parent['id']}").json()["children"] == [child["id"]]

    twenty, extended, ten = (result(http, job["id"]) for job in (whole, child, parent))
    assert image_data(extended) == image_data(twenty) and pixels(extended) == pixels(twenty)
    assert pixels(ten) != pixels(twenty)  # ten more iterations changed the picture


def test_the_manifest_repaints_the_chain_pixel_for_pixel(http: httpx.Client, stack: Stack) -> None:
    parent = paint(http, iterations=6, prompt="a seed in the soil ^ a green sprout", init="pixels")
    answer = http.post(
        f"/v1/jobs/{parent['id']}/extend",
        json={"iterations": 5, "prompt": "a flowering tree"},
        headers={"Idempotency-Key": f"carry-on-{time.time_ns()}"},
    )
    child = done(http, answer.json()["id"])
    manifest = http.get(f"/v1/jobs/{child['id']}/manifest")
    assert manifest.status_code == 200
    recorded = manifest.json()
    assert recorded["seed"] == SMALL["seed"] and recorded["model"] == "tiny" and recorded["device"] == "cpu"
    assert [(s["job_id"], s["until"], s["params"]["prompt"]) for s in recorded["segments"]] == [
        (parent["id"], 6, "a seed in the soil ^ a green sprout"),
        (child["id"], 11, "a flowering tree"),
    ]
    assert recorded["params"]["init"] == "pixels" and recorded["params"]["optimizer"] == "adam"
    assert len(next(iter(recorded["weights_sha256"].values()))) == 64
    assert recorded["torch_version"] and recorded["artgen_version"] and recorded["engine"]

    painted = result(http, child["id"])
    with Image.open(io.BytesIO(painted)) as image:
        assert json.loads(image.text["manifest"]) == recorded  # type: ignore[attr-defined]
    folder = stack.root / "cli"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_bytes(manifest.content)
    (folder / "result.png").write_bytes(painted)
    artgen = Path(sys.executable).parent / "artgen"
    for source in ("manifest.json", "result.png"):
        out = folder / f"repainted-from-{source}.png"
        command = [str(artgen), "generate", "--manifest", str(folder / source), "-o", str(out)]
        ran = subprocess.run(command, env=stack.env, capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr
        assert pixels(out.read_bytes()) == pixels(painted), source


def test_extend_says_why_it_cannot(http: httpx.Client, stack: Stack) -> None:
    unknown = "0123456789abcdef0123456789abcdef"
    assert http.post(f"/v1/jobs/{unknown}/extend", json={"iterations": 5}).status_code == 404
    queued = http.post("/v1/jobs", json={**SMALL, "iterations": 400}).json()
    answer = http.post(f"/v1/jobs/{queued['id']}/extend", json={"iterations": 5})
    assert answer.status_code == 409 and "only a succeeded job can be extended" in answer.json()["detail"]
    assert http.post(f"/v1/jobs/{queued['id']}/cancel").status_code == 202
    assert http.get(f"/v1/jobs/{queued['id']}/manifest").status_code == 409

    job = paint(http, iterations=3)
    for body in ({"iterations": 0}, {"iterations": "x"}, {"iterations": 5, "prompt": "a ^ b"}, {"n": 1}):
        assert http.post(f"/v1/jobs/{job['id']}/extend", json=body).status_code == 422, body
    (stack.root / "results" / job["id"] / "state.pt").unlink()
    answer = http.post(f"/v1/jobs/{job['id']}/extend", json={"iterations": 5})
    assert answer.status_code == 409 and "no longer kept" in answer.json()["detail"]


def test_delete_removes_the_kept_state_and_manifest(http: httpx.Client, stack: Stack) -> None:
    job = paint(http, iterations=3)
    folder = stack.root / "results" / job["id"]
    assert {"result.png", "state.pt", "manifest.json"} <= {p.name for p in folder.iterdir()}
    assert http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert not folder.exists()
    assert list(stack.client.scan_iter(match=f"*{job['id']}*", count=1000)) == []
