"""API keys: 401 without a valid key, other keys' jobs invisible, constant-time comparison; CORS."""

from __future__ import annotations

import hmac
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.auth import ApiKeys, owner_of
from shared.keys import Keys
from tests.unit.api.support import KEY_A, KEY_B, PREFIX, FakeWorker, make_settings

BODY = {"prompt": "a cat", "iterations": 3}


@pytest.fixture
def keyed(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(api_keys=[KEY_A, KEY_B])


def test_missing_or_wrong_key_is_401(keyed: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key"}, {"X-API-Key": KEY_A + "x"}):
        response = keyed.post("/v1/jobs", json=BODY, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    for path in ("/v1/jobs", "/v1/generate_text2img_progressbar"):
        assert keyed.get(path).status_code == 401


def test_either_header_works_and_jobs_belong_to_their_key(keyed: TestClient, worker: FakeWorker) -> None:
    a = keyed.post("/v1/jobs", json=BODY, headers={"Authorization": f"Bearer {KEY_A}"})
    assert a.status_code == 202
    job_id = a.json()["id"]
    assert worker.record(job_id).owner == owner_of(KEY_A) == owner_of(KEY_A)[:16]
    assert worker.client.zscore(Keys(PREFIX).owner_jobs(owner_of(KEY_A)), job_id) is not None
    as_a = {"X-API-Key": KEY_A}
    as_b = {"X-API-Key": KEY_B}
    assert keyed.get(f"/v1/jobs/{job_id}", headers=as_a).status_code == 200
    for path in ("", "/frame", "/result", "/events"):
        assert keyed.get(f"/v1/jobs/{job_id}{path}", headers=as_b).status_code == 404
    assert keyed.post(f"/v1/jobs/{job_id}/cancel", headers=as_b).status_code == 404
    assert keyed.get("/v1/jobs", headers=as_b).json()["jobs"] == []
    assert [j["id"] for j in keyed.get("/v1/jobs", headers=as_a).json()["jobs"]] == [job_id]
    # The original API's progress services show the caller's own latest job only.
    assert keyed.get("/v1/generate_text2img_progressbar", headers=as_b).status_code == 404
    assert keyed.get("/v1/generate_text2img_progressbar", headers=as_a).json() == "0"
    assert keyed.post(f"/v1/jobs/{job_id}/cancel", headers=as_a).status_code == 202


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("api.auth.hmac.compare_digest", spy)
    keys = ApiKeys(make_settings(api_keys=[SecretStr(KEY_A), SecretStr(KEY_B)]))
    assert keys.owner(KEY_A) == owner_of(KEY_A)
    # Every configured key is compared, even after a match: timing does not tell which key matched.
    assert [b for _, b in calls] == [KEY_A.encode(), KEY_B.encode()]
    assert keys.owner("nope") is None and keys.owner(None) is None


def test_keys_off_means_one_anonymous_owner(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=BODY).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": "anything"}).status_code == 200


def test_health_needs_no_key(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/metrics").status_code == 200


def test_cors_never_allows_credentials_with_a_wildcard(make_client: Callable[..., TestClient]) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    wildcard = make_client(cors_origins=["*"])
    response = wildcard.options("/v1/jobs", headers=preflight)
    assert response.headers.get("access-control-allow-origin") == "*"
    assert "access-control-allow-credentials" not in response.headers
    listed = make_client(cors_origins=["https://app.example"])
    ok = listed.options("/v1/jobs", headers={**preflight, "Origin": "https://app.example"})
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert ok.headers["access-control-allow-credentials"] == "true"
    refused = listed.options("/v1/jobs", headers=preflight)
    assert "access-control-allow-origin" not in refused.headers
    none = make_client()
    assert "access-control-allow-origin" not in none.options("/v1/jobs", headers=preflight).headers
