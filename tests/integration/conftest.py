"""The real stack for integration tests: a redis-server, Celery worker processes, the API over HTTP.

One `Stack` (one Redis, one worker process with two pool slots, one API) serves the whole session, as
in Celery's own integration suite. Tests that kill or restart parts build a `Stack` of their own. It is
the launcher's `LocalStack` (what `artgen up` and `bench/` run) with the tests' settings.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from launch.processes import Proc
from launch.processes import wait_for as wait_for  # the tests' polling helper, re-exported
from launch.stack import LocalStack

REPO = Path(__file__).resolve().parents[2]

# Every test stack's settings; a test's own Stack(...) arguments come on top.
TEST_SETTINGS = {
    "model": "tiny",
    "device": "cpu",
    "preview_every": "2",
    # Load tests submit hundreds of jobs from one address; the limit has its own tests.
    "rate_limit_per_minute": "0",
    "log_level": "INFO",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.integration)


class Stack(LocalStack):
    """The launcher's stack with the tests' settings: own redis-server (AOF on) started, own key prefix."""

    def __init__(self, root: Path, **settings: str) -> None:
        super().__init__(
            root,
            {
                **TEST_SETTINGS,
                "redis_prefix": f"test-{uuid.uuid4().hex[:8]}",
                "models_dir": str(root / "models"),
                "results_dir": str(root / "results"),
                **settings,
            },
            appendonly=True,
            # Pool processes share two cores: keep torch from oversubscribing them.
            env={"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
            cwd=REPO,
            domain="test",
        )
        self.start()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    session_stack = Stack(tmp_path_factory.mktemp("stack"))
    yield session_stack
    session_stack.close()


@pytest.fixture(scope="session")
def redis_client(stack: Stack) -> redis.Redis:
    return stack.client


@pytest.fixture(scope="session")
def worker(stack: Stack) -> Proc:
    """The session's shared worker: one process, two pool slots (two jobs at once)."""
    return stack.start_worker("shared", concurrency=2)


@pytest.fixture(scope="session")
def api_url(stack: Stack, worker: Proc) -> str:
    return stack.start_api()


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client
