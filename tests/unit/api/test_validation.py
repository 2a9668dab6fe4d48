"""Bad input to POST /v1/jobs: always a clear 4xx, never a 500, nothing queued."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.unit.api.support import RecordingEnqueuer, png_bytes

BASE = {"prompt": "a cat", "width": 64, "height": 64, "iterations": 5}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions in a few bytes: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _noisy_png(size: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 80).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _messages(response: Any) -> str:
    return " ".join(str(item) for item in response.json()["detail"])


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"width": 50}, "multiple of 16"),
        ({"width": 4096}, "128"),
        ({"height": 0}, "height"),
        ({"width": -64}, "width"),
        ({"width": 10**30}, "width"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": 10**12}, "iterations"),
        ({"iterations": -1}, "iterations"),
        ({"iterations": 1.5}, "iterations"),
        ({"cutn": -3}, "cutn"),
        ({"cutn": 17}, "cutn"),
        ({"seed": -1}, "seed"),
        ({"seed": 10**30}, "seed"),
        ({"cut_pow": 1e308}, "cut_pow"),
        ({"step_size": 0}, "step_size"),
        ({"init_weight": -1}, "init_weight"),
        ({"init_weight": 1.0}, "init_image"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "cat:1.2.3"}, "weight"),
        ({"prompt": "a||b"}, "empty"),
        ({"prompt": "x" * 100_000}, "300"),
        ({"prompt": 123}, "prompt"),
        ({"model": "no-such-model"}, "model"),
        ({"width": "wide"}, "width"),
        ({"surprise": 1}, "surprise"),
        ({"image_prompts": ["a"] * 5}, "image_prompts"),
        ({"init_image": "not base64!"}, "base64"),
    ],
)
def test_bad_field_is_422_naming_it(
    client: TestClient, enqueuer: RecordingEnqueuer, change: dict[str, Any], fragment: str
) -> None:
    response = client.post("/v1/jobs", json={**BASE, **change})
    assert response.status_code == 422, response.text
    assert fragment in _messages(response)
    assert enqueuer.sent == []


def test_a_100kb_prompt_is_not_echoed_back(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={**BASE, "prompt": "x" * 100_000})
    assert response.status_code == 422 and len(response.content) < 2000


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"", "application/json"),
        (b'{"prompt": "a", "width": NaN}', "application/json"),
        (b"\xff\xfe\x00", "application/json"),
    ],
)
def test_malformed_body_is_422(client: TestClient, content: bytes, content_type: str) -> None:
    response = client.post("/v1/jobs", content=content, headers={"content-type": content_type})
    assert response.status_code == 422, response.text


def test_unsupported_content_type_is_415(client: TestClient) -> None:
    response = client.post("/v1/jobs", content=b"prompt=a", headers={"content-type": "text/plain"})
    assert response.status_code == 415


def _upload(client: TestClient, data: bytes, name: str = "init_image") -> Any:
    return client.post(
        "/v1/jobs",
        data={"prompt": "a cat", "width": "64", "height": "64"},
        files={name: ("x.png", data, "image/png")},
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"hello, I am not a picture", "not a readable"),
        (b"", "empty"),
        (_noisy_png()[:3000], "not a readable"),  # truncated PNG
        (png_bytes(fmt="GIF"), "not a readable"),  # a format Pillow reads but we do not take
        (png_bytes(fmt="BMP"), "not a readable"),
        (_png_header_only(1024, 1024), "pixels"),  # over max_upload_pixels
        (_png_header_only(100_000, 100_000), "pixels"),  # far over: Pillow's own bomb limit too
    ],
)
def test_bad_upload_is_422(
    client: TestClient, enqueuer: RecordingEnqueuer, data: bytes, fragment: str
) -> None:
    response = _upload(client, data)
    assert response.status_code == 422, response.text
    assert fragment in _messages(response)
    assert enqueuer.sent == []


def test_pillow_decompression_bomb_error_is_4xx(make_client: Callable[..., TestClient]) -> None:
    # With our own pixel limit raised out of the way, Pillow's bomb check is what refuses it.
    client = make_client(max_upload_pixels=10**12)
    response = _upload(client, _png_header_only(100_000, 100_000))
    assert response.status_code == 422 and "bomb" in _messages(response)


def test_unexpected_file_field_is_422(client: TestClient) -> None:
    assert _upload(client, png_bytes(), name="payload").status_code == 422


def test_upload_over_the_byte_limit_is_413(client: TestClient) -> None:
    big = _noisy_png(200)  # about 120 kB: above max_upload_bytes (64 kB), below the body limit
    assert len(big) > 64 * 1024
    response = _upload(client, big)
    assert response.status_code == 413 and "bytes" in response.json()["detail"]


def test_body_over_the_limit_is_413_before_reading(client: TestClient) -> None:
    response = client.post("/v1/jobs", content=b"x" * 400_000, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 10_000

    response = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_content_length_lie_is_413(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", content=b"{}", headers={"content-type": "application/json", "content-length": "99999999"}
    )
    assert response.status_code == 413


def test_base64_upload_over_the_limit_is_413(client: TestClient) -> None:
    import base64

    encoded = base64.b64encode(b"\0" * 70_000).decode()
    response = client.post("/v1/jobs", json={**BASE, "init_image": encoded})
    assert response.status_code == 413


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(["prompt", "width", "height", "iterations", "cutn", "seed", "model", "cut_pow"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(min_value=-(2**70), max_value=2**70),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=30),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_no_json_body_gives_a_5xx(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code in (202, 422, 429), response.text


@pytest.mark.parametrize("prompt", ["a cat|:0.5", "a cat|:nan", "::2"])
def test_a_prompt_piece_without_text_is_422_naming_it(
    client: TestClient, enqueuer: RecordingEnqueuer, prompt: str
) -> None:
    response = client.post("/v1/jobs", json={**BASE, "prompt": prompt})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    piece = prompt.split("|")[-1]
    assert error["loc"] == ["body", "prompt"] and f"prompt piece {piece!r} has no text" in error["msg"]
    assert enqueuer.sent == []


def test_every_mistake_is_named_in_one_answer(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={**BASE, "prompt": "a cat|:2", "width": 50, "cutn": 17})
    assert response.status_code == 422
    assert {tuple(e["loc"]) for e in response.json()["detail"]} == {
        ("body", "prompt"),
        ("body", "width"),
        ("body", "cutn"),
    }
