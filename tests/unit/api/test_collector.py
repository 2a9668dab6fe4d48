"""The API process's garbage collector: full passes spaced by ARTGEN_API_GC_FULL_EVERY, startup frozen."""

from __future__ import annotations

import gc

import fakeredis
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.main import PYTHON_GC_THRESHOLDS, create_app
from tests.unit.api.support import RecordingEnqueuer, make_settings


def test_the_setting_spaces_full_passes_while_the_app_runs(
    server: fakeredis.FakeServer, enqueuer: RecordingEnqueuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARTGEN_API_GC_FULL_EVERY", "250")
    app = create_app(make_settings(), enqueuer=enqueuer, redis_client=fakeredis.FakeAsyncRedis(server=server))
    young, middle, full = PYTHON_GC_THRESHOLDS
    assert gc.get_threshold() == (young, middle, full)
    with TestClient(app) as client:
        assert gc.get_threshold() == (young, middle, 250)
        assert gc.get_freeze_count() > 0  # startup's objects are out of every pass
        assert client.get("/healthz").status_code == 200
    assert gc.get_threshold() == PYTHON_GC_THRESHOLDS
    assert gc.get_freeze_count() == 0


def test_the_setting_is_at_least_one() -> None:
    with pytest.raises(ValidationError, match="api_gc_full_every"):
        make_settings(api_gc_full_every=0)
