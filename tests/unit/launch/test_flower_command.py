"""`artgen flower` refuses to start open, or with half or weak credentials (checked before Flower starts)."""

from __future__ import annotations

import os

import click
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from launch.cli import cli
from launch.flower import basic_auth, flower_args
from shared.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ARTGEN_"):
            monkeypatch.delenv(name)
    # Point at a port nothing listens on, so a test that wrongly got past the checks fails fast.
    monkeypatch.setenv("ARTGEN_REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()


def _run(*args: str, **env: str) -> tuple[int, str]:
    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["flower", *args], env=env)
    get_settings.cache_clear()
    return result.exit_code, result.output


def test_refuses_without_credentials() -> None:
    code, output = _run()
    assert code == 1
    assert "ARTGEN_FLOWER_USER and ARTGEN_FLOWER_PASSWORD" in output and "--unauthenticated" in output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ARTGEN_FLOWER_USER": "ops"}, "set both"),
        ({"ARTGEN_FLOWER_PASSWORD": "a-long-enough-password"}, "set both"),
        ({"ARTGEN_FLOWER_USER": "ops", "ARTGEN_FLOWER_PASSWORD": "short"}, "at least 12"),
        ({"ARTGEN_FLOWER_USER": "o:ps", "ARTGEN_FLOWER_PASSWORD": "a-long-enough-password"}, "':'"),
        ({"ARTGEN_FLOWER_USER": "ops", "ARTGEN_FLOWER_PASSWORD": "a-long,enough-password"}, "','"),
    ],
)
def test_refuses_half_or_weak_credentials(env: dict[str, str], message: str) -> None:
    code, output = _run(**env)
    assert code == 1 and message in output


def test_refuses_unauthenticated_flag_with_credentials() -> None:
    code, output = _run(
        "--unauthenticated", ARTGEN_FLOWER_USER="ops", ARTGEN_FLOWER_PASSWORD="a-long-password"
    )
    assert code == 1 and "drop one" in output


def test_placeholder_password_is_refused_by_settings() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        Settings(flower_user="ops", flower_password=SecretStr("changeme"))


def test_credentials_become_flower_basic_auth() -> None:
    settings = Settings(flower_user="ops", flower_password=SecretStr("a-long-enough-password"))
    credentials = basic_auth(settings)
    assert credentials == "ops:a-long-enough-password"
    assert flower_args("0.0.0.0", 5555, credentials) == [
        "--address=0.0.0.0",
        "--port=5555",
        "--basic-auth=ops:a-long-enough-password",
    ]
    assert basic_auth(Settings()) is None
    assert flower_args("127.0.0.1", 5555, None) == ["--address=127.0.0.1", "--port=5555"]
    with pytest.raises(click.ClickException):
        basic_auth(Settings(flower_user="ops"))
