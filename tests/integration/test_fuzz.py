"""Property-based fuzz of every operation in the OpenAPI schema, over real HTTP: no answer may be a 5xx.

The stack is real (redis-server, a worker, the API) with small limits, so that every job the fuzz gets
accepted (the blocking alias routes wait for theirs) finishes in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
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


def _fuzz(operation: Any, calls: dict[str, int]) -> Callable[[], None]:
    """A Hypothesis test of one operation: every generated request goes over real HTTP."""

    @given(case=operation.as_strategy())
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def call(case: schemathesis.Case) -> None:
        calls[operation.label] += 1
        case.call_and_validate(checks=[not_a_server_error], timeout=150)

    return call  # type: ignore[no-any-return]


def test_no_input_gets_a_server_error(fuzz_stack: tuple[Stack, str]) -> None:
    _, url = fuzz_stack
    api_schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: dict[str, str] = {}
    calls: dict[str, int] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        calls[operation.label] = 0

        call = _fuzz(operation, calls)
        try:
            call()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    print(f"\nfuzzed {len(calls)} operations, {sum(calls.values())} requests: {calls}")
    assert len(calls) >= 15
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
