"""LocalStack's configuration of its processes, checked without starting any (the integration tests do)."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.stack import LocalStack
from shared.settings import Settings


@pytest.fixture(autouse=True)
def _caller_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTGEN_MODEL", "from-the-caller")
    monkeypatch.setenv("ARTGEN_REDIS_URL", "redis://elsewhere:6379/0")


def test_a_private_stack_sets_its_own_settings_and_drops_the_callers(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, {"batch_size": "4", "redis_prefix": "bench-1"}, env={"OMP_NUM_THREADS": "1"})
    assert stack.redis is not None and stack.redis.data_dir == tmp_path / "redis"
    assert stack.env["ARTGEN_REDIS_URL"] == stack.redis_url == f"redis://127.0.0.1:{stack.redis.port}/0"
    assert stack.env["ARTGEN_BATCH_SIZE"] == "4" and stack.env["OMP_NUM_THREADS"] == "1"
    assert "ARTGEN_MODEL" not in stack.env
    assert stack.prefix == "bench-1"


def test_up_keeps_the_callers_settings_and_their_redis(tmp_path: Path) -> None:
    outside = "redis://elsewhere:6379/0"
    stack = LocalStack(tmp_path, {"model": "tiny"}, redis_url=outside, inherit_settings=True)
    assert stack.redis is None and stack.env["ARTGEN_REDIS_URL"] == outside
    assert stack.env["ARTGEN_MODEL"] == "tiny"  # the stack's settings win over the caller's
    assert stack.prefix == Settings.model_fields["redis_prefix"].default
    with pytest.raises(RuntimeError, match="did not start"):
        stack.restart_redis()
