"""`ARTGEN_BROKER_URL` puts Celery's queues on a Redis of their own; unset, they share the data Redis."""

from __future__ import annotations

import pytest

from shared.celeryconf import celery_config
from shared.settings import Settings

DATA = "redis://data.example:6379/0"
BROKER = "redis://broker.example:6379/0"


@pytest.fixture(autouse=True)
def _no_artgen_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ARTGEN_"):
            monkeypatch.delenv(name)


def test_the_broker_defaults_to_the_data_redis() -> None:
    settings = Settings(_env_file=None, redis_url=DATA)  # type: ignore[call-arg]
    assert celery_config(settings)["broker_url"] == DATA


@pytest.mark.parametrize("value", ["", None])
def test_an_empty_broker_url_means_the_data_redis(value: str | None) -> None:
    # compose passes ARTGEN_BROKER_URL="" when .env leaves it unset.
    settings = Settings(_env_file=None, redis_url=DATA, broker_url=value)  # type: ignore[call-arg]
    assert celery_config(settings)["broker_url"] == DATA


def test_a_broker_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTGEN_REDIS_URL", DATA)
    monkeypatch.setenv("ARTGEN_BROKER_URL", BROKER)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert celery_config(settings)["broker_url"] == BROKER
    assert settings.redis_url == DATA, "job data stays on the data Redis"
