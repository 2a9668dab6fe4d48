"""bench/watchers.py's arithmetic: percentiles and the poller's split into phases, by hand."""

from __future__ import annotations

import math

from bench.watchers import _poll_summary, percentile


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_the_poller_is_summed_up_per_phase_with_its_errors() -> None:
    # (time, latency s, status): two in the first phase, three in the second, one 503 among them.
    samples = [(1.0, 0.010, 200), (2.0, 0.030, 200), (3.0, 0.005, 200), (4.0, 0.200, 503), (5.0, 0.020, 200)]
    first = _poll_summary(samples, 0.0, 2.5)
    second = _poll_summary(samples, 2.5, 5.0)
    assert (first["requests"], first["errors"]) == (2, 0)
    assert math.isclose(first["p99_ms"], 30.0) and math.isclose(first["max_ms"], 30.0)
    assert (second["requests"], second["errors"]) == (3, 1)
    assert math.isclose(second["p50_ms"], 20.0) and math.isclose(second["p99_ms"], 200.0)
