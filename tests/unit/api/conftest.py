"""API unit tests: the real app over fakeredis; a recording enqueuer stands in for the broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared.keys import Keys
from shared.storage import DirectoryStore
from tests.unit.api.support import PREFIX, FakeWorker, RecordingEnqueuer, make_settings


@pytest.fixture(autouse=True)
def _no_artgen_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from each test, never from the machine's ARTGEN_* variables."""
    import os

    for name in list(os.environ):
        if name.startswith("ARTGEN_"):
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def worker(server: fakeredis.FakeServer) -> FakeWorker:
    return FakeWorker(fakeredis.FakeRedis(server=server), Keys(PREFIX))


@pytest.fixture
def enqueuer() -> RecordingEnqueuer:
    return RecordingEnqueuer()


@pytest.fixture
def results(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "results")


@pytest.fixture
def make_client(
    server: fakeredis.FakeServer, enqueuer: RecordingEnqueuer, results: DirectoryStore
) -> Iterator[Callable[..., TestClient]]:
    """Factory: a TestClient (lifespan running) on an app built with these setting overrides."""
    clients: list[TestClient] = []

    def _make(**overrides: Any) -> TestClient:
        app = create_app(
            make_settings(**overrides),
            enqueuer=enqueuer,
            redis_client=fakeredis.FakeAsyncRedis(server=server),
            result_store=results,
        )
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def submit(client: TestClient) -> Callable[..., dict[str, Any]]:
    def _submit(**body: Any) -> dict[str, Any]:
        payload = {"prompt": "a red fox", "width": 64, "height": 64, "iterations": 10, **body}
        response = client.post("/v1/jobs", json=payload)
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    return _submit
