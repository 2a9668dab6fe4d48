"""The job statistics hash: what workers add, what the API reads back."""

from __future__ import annotations

import fakeredis
import pytest

from shared.stats import DURATION_BUCKETS, read_stats, record_finished


def test_counts_and_histograms_round_trip() -> None:
    client = fakeredis.FakeRedis()
    pipe = client.pipeline()
    record_finished(pipe, "s", "tiny", "succeeded", run_s=0.4, wait_s=0.05, iterations=10)
    record_finished(pipe, "s", "tiny", "succeeded", run_s=7.0, wait_s=2.0, iterations=10)
    record_finished(pipe, "s", "tiny", "canceled", run_s=None, wait_s=12.0, iterations=0)
    record_finished(pipe, "s", "imagenet-16384", "failed", run_s=5000.0, wait_s=None, iterations=3)
    pipe.execute()

    stats = read_stats(client.hgetall("s"))
    assert stats.finished == {
        ("tiny", "succeeded"): 2,
        ("tiny", "canceled"): 1,
        ("imagenet-16384", "failed"): 1,
    }
    assert stats.iterations == {"tiny": 20, "imagenet-16384": 3}
    duration = stats.histograms[("duration", "tiny")]
    # Cumulative: 0.4 s falls in le=1, 7 s in le=10; every later bucket includes both.
    assert dict(duration.buckets)["1.0"] == 1 and dict(duration.buckets)["5.0"] == 1
    assert dict(duration.buckets)["10.0"] == 2 and duration.count == 2
    assert duration.total == pytest.approx(7.4)
    assert len(duration.buckets) == len(DURATION_BUCKETS) + 1
    assert stats.histograms[("queue_wait", "tiny")].count == 3
    # Beyond the last bound: only +Inf counts it.
    long = dict(stats.histograms[("duration", "imagenet-16384")].buckets)
    assert long["3600.0"] == 0 and long["+Inf"] == 1


def test_values_that_are_not_durations_are_not_counted() -> None:
    client = fakeredis.FakeRedis()
    pipe = client.pipeline()
    record_finished(pipe, "s", "tiny", "failed", run_s=float("nan"), wait_s=-1.0, iterations=0)
    pipe.execute()
    stats = read_stats(client.hgetall("s"))
    assert stats.finished == {("tiny", "failed"): 1} and stats.histograms == {}
