"""The config endpoint, the time-lapse and the web page served at /."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import STATIC_DIR
from tests.unit.api.support import FakeWorker, png_bytes

SCRIPT_TAG = re.compile(r"<script\b([^>]*)>")
# `import ... from "./x.js"`, `export ... from "./x.js"` and `import "./x.js"`: what a module loads.
MODULE_IMPORT = re.compile(r"""(?:\bfrom|^import)\s*["']([^"']+)["']""", re.MULTILINE)


def page_modules(client: TestClient) -> dict[str, str]:
    """Every module the page at / loads (following imports), by URL path, with its content type."""
    html = client.get("/").text
    pending: list[str] = []
    for attributes in SCRIPT_TAG.findall(html):
        assert 'type="module"' in attributes, f"a classic script on the page: <script{attributes}>"
        src = re.search(r'\bsrc="([^"]+)"', attributes)
        assert src, f"an inline script on the page: <script{attributes}>"
        pending.append(urljoin("/", src.group(1)))
    seen: dict[str, str] = {}
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        response = client.get(path)
        assert response.status_code == 200, f"{path}: HTTP {response.status_code}"
        seen[path] = response.headers["content-type"]
        pending.extend(urljoin(path, target) for target in MODULE_IMPORT.findall(response.text))
    return seen


def test_config_reports_limits_models_and_notes(client: TestClient) -> None:
    config = client.get("/v1/config").json()
    assert config["models"] == ["tiny"] and config["default_model"] == "tiny"
    assert "untrained demo model" in config["notes"]["tiny"]
    assert config["max_size"] == 128 and config["max_cutn"] == 16 and config["api_keys"] is False


def test_config_says_when_keys_are_needed(make_client: Callable[..., TestClient]) -> None:
    keyed = make_client(api_keys="k" * 32)
    assert keyed.get("/v1/config").json()["api_keys"] is True


def test_every_module_the_page_imports_is_served_as_javascript(client: TestClient) -> None:
    modules = page_modules(client)
    assert "/js/main.js" in modules
    for path, content_type in modules.items():
        assert content_type.startswith("text/javascript"), f"{path} is served as {content_type}"
    # No module is left out of the page, and none it asks for is missing from the package.
    shipped = {"/" + path.relative_to(STATIC_DIR).as_posix() for path in STATIC_DIR.rglob("*.js")}
    assert set(modules) == shipped


def test_modules_are_javascript_whatever_the_hosts_mime_table_says(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some hosts' tables (the Windows registry, say) map .js to text/plain; browsers then refuse modules.
    monkeypatch.setattr("starlette.responses.guess_type", lambda *_a, **_k: ("text/plain", None))
    response = client.get("/js/main.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert client.get("/style.css").headers["content-type"].startswith("text/plain")  # only .js is pinned
    etag = response.headers["etag"]
    assert client.get("/js/main.js", headers={"If-None-Match": etag}).status_code == 304


def test_timelapse_is_an_animated_webp_of_the_kept_frames(
    client: TestClient, submit: Callable[..., dict[str, Any]], worker: FakeWorker
) -> None:
    job = submit()
    assert client.get(f"/v1/jobs/{job['id']}/timelapse").status_code == 404  # no frames yet
    worker.start(job["id"])
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for colour in colours:
        worker.client.rpush(worker.keys.frames(job["id"]), png_bytes((64, 64), colour))
    worker.finish(job["id"], result=png_bytes((64, 64)))

    response = client.get(f"/v1/jobs/{job['id']}/timelapse")
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    animation = Image.open(io.BytesIO(response.content))
    assert animation.format == "WEBP" and animation.n_frames == 3
    seen = []
    for index in range(animation.n_frames):
        animation.seek(index)
        seen.append(animation.convert("RGB").getpixel((32, 32)))
    assert seen == colours
    # A finished job's time-lapse is made once and kept.
    assert worker.client.exists(worker.keys.timelapse(job["id"]))


def test_timelapse_of_another_job_is_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/0123456789abcdef0123456789abcdef/timelapse").status_code == 404


def test_submissions_over_the_rate_limit_get_429_with_retry_after(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(rate_limit_per_minute=3, max_queue_depth=100)
    body = {"prompt": "a red fox", "width": 64, "height": 64, "iterations": 10}
    answers = [client.post("/v1/jobs", json=body) for _ in range(4)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    assert "at most 3 jobs a minute" in answers[-1].json()["detail"]
    # Reading is not limited.
    assert client.get(f"/v1/jobs/{answers[0].json()['id']}").status_code == 200


def test_the_rate_limit_counts_each_api_key_apart(make_client: Callable[..., TestClient]) -> None:
    keys = ["a" * 32, "b" * 32]
    client = make_client(rate_limit_per_minute=1, api_keys=",".join(keys), max_queue_depth=100)
    body = {"prompt": "a red fox", "width": 64, "height": 64, "iterations": 10}
    first, second = ({"Authorization": f"Bearer {key}"} for key in keys)
    assert client.post("/v1/jobs", json=body, headers=first).status_code == 202
    assert client.post("/v1/jobs", json=body, headers=second).status_code == 202
    assert client.post("/v1/jobs", json=body, headers=first).status_code == 429


def test_config_reports_each_models_defaults(make_client: Callable[..., TestClient]) -> None:
    client = make_client(
        model=None, worker_models=["toyworld", "tiny"], default_size=None, default_cutn=None, max_size=512
    )
    config = client.get("/v1/config").json()
    assert config["model_defaults"] == {
        "toyworld": {
            "size": 128,
            "iterations": 200,
            "cutn": 16,
            "step_size": 0.2,
        },  # cutn 32, held to max_cutn
        "tiny": {
            "size": 256,
            "iterations": 100,
            "cutn": 16,
            "step_size": 0.1,
        },  # 32 cutouts, held to max_cutn
    }
    # The flat defaults are the default model's.
    assert (config["default_size"], config["default_iterations"], config["default_cutn"]) == (128, 200, 16)
    assert "artgen models pull imagenet-16384" in config["notes"]["toyworld"]


def test_config_without_a_model_has_no_defaults(make_client: Callable[..., TestClient]) -> None:
    config = make_client(model=None).get("/v1/config").json()
    assert config["models"] == [] and config["model_defaults"] == {} and config["default_size"] is None
