"""Settings from ARTGEN_* variables: lists, secrets, limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ARTGEN_"):
            monkeypatch.delenv(name)


def test_defaults_without_environment() -> None:
    settings = Settings(_env_file=None)
    assert settings.model is None and settings.worker_models == [] and not settings.auth_enabled
    assert settings.url == "http://127.0.0.1:8000"
    assert settings.visibility_timeout_s > settings.hard_time_limit_s > settings.soft_time_limit_s


def test_comma_separated_lists_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTGEN_WORKER_MODELS", "tiny, toyworld,")
    monkeypatch.setenv("ARTGEN_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("ARTGEN_API_KEYS", "k" * 20 + "," + "j" * 16)
    monkeypatch.setenv("ARTGEN_PORT", "9001")
    settings = Settings(_env_file=None)
    assert settings.worker_models == ["tiny", "toyworld"]
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert [k.get_secret_value() for k in settings.api_keys] == ["k" * 20, "j" * 16]
    assert settings.auth_enabled and settings.port == 9001
    assert "k" * 20 not in repr(settings)  # secrets never show up in logs of the settings


@pytest.mark.parametrize("keys", ["changeme", "short-key", "secret"])
def test_weak_api_keys_are_refused(monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    monkeypatch.setenv("ARTGEN_API_KEYS", keys)
    with pytest.raises(ValidationError, match="API_KEYS"):
        Settings(_env_file=None)


@pytest.mark.parametrize(
    "values",
    [
        {"hard_time_limit_s": 10, "soft_time_limit_s": 10},
        {"default_size": 100},
        {"default_size": 1024, "max_size": 512},
        {"port": 0},
        {"max_upload_bytes": 10},
        {"flower_password": "admin"},
    ],
)
def test_inconsistent_settings_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **values)


def test_served_models_are_the_worker_models_else_the_model() -> None:
    assert Settings(_env_file=None).served_models == []
    assert Settings(_env_file=None, model="tiny").served_models == ["tiny"]
    both = Settings(_env_file=None, model="tiny", worker_models=["toyworld", "tiny"])
    assert both.served_models == ["toyworld", "tiny"]


def test_job_defaults_are_unset_unless_given() -> None:
    """Unset, every model gets its own defaults (shared.model_facts); set, one value for all."""
    settings = Settings(_env_file=None)
    assert (settings.default_size, settings.default_iterations, settings.default_cutn) == (None, None, None)
    assert Settings(_env_file=None, default_size=64).default_size == 64


def test_the_webhook_secret_is_a_standard_webhooks_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    good = "whsec_" + base64.b64encode(b"k" * 32).decode()
    monkeypatch.setenv("ARTGEN_WEBHOOK_SECRET", good)
    monkeypatch.setenv("ARTGEN_WEBHOOK_ALLOW_HOSTS", "127.0.0.1, receiver.internal,10.0.0.0/8")
    settings = Settings(_env_file=None)
    assert settings.webhook_secret is not None and settings.webhook_secret.get_secret_value() == good
    assert settings.webhook_allow_hosts == ["127.0.0.1", "receiver.internal", "10.0.0.0/8"]
    assert good not in repr(settings)
    for bad in ("secret", base64.b64encode(b"k" * 32).decode(), "whsec_not*base64", "whsec_" + "a" * 8):
        monkeypatch.setenv("ARTGEN_WEBHOOK_SECRET", bad)
        with pytest.raises(ValidationError, match="ARTGEN_WEBHOOK_SECRET"):
            Settings(_env_file=None)
