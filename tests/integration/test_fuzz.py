"""Property-based fuzz of every operation in the OpenAPI schema, over real HTTP: no answer may be a 5xx.

The stack is real (redis-server, a worker, the API) with small limits, so that every job the fuzz gets
accepted (the blocking alias routes wait for theirs) finishes in well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMITS = {
    "max_size": "64",
    "default_size": "32",
    "max_iterations": "4",
    "default_iterations": "2",
    "max_cutn": "4",
    "default_cutn": "2",
    "max_upload_bytes": "65536",
    "blocking_timeout_s": "120",
}


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    stack = Stack(Path(tmp_path_factory.mktemp("fuzz")), **LIMITS)
    stack.start_worker("fuzz", concurrency=2)
    url = stack.start_api()
    yield stack, url
    stack.close()


@pytest.fixture(scope="module")
def api_schema(fuzz_stack: tuple[Stack, str]) -> schemathesis.BaseSchema:
    _, url = fuzz_stack
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error], timeout=150)
