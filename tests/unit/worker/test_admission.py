"""The batch admission policy on plain facts: no Redis, no torch."""

from __future__ import annotations

import pytest

from worker.admission import AdmissionPolicy, BatchView, Candidate, Verdict

POLICY = AdmissionPolicy(batch_size=4, soft_time_limit_s=100.0)


def batch(jobs: int = 1, elapsed_s: float = 0.0, step_s: float | None = 0.1) -> BatchView:
    return BatchView(width=64, height=64, jobs=jobs, elapsed_s=elapsed_s, step_s=step_s)


def candidate(**fields: object) -> Candidate:
    values: dict[str, object] = {
        "job_id": "j",
        "state": "queued",
        "width": 64,
        "height": 64,
        "cutn": 8,
        "iterations": 100,
    }
    values.update(fields)
    return Candidate(**values)  # type: ignore[arg-type]


def test_a_compatible_job_that_fits_joins() -> None:
    assert POLICY.judge(batch(), candidate(), fits_memory=True) is Verdict.JOIN


@pytest.mark.parametrize("state", ["canceled", "running", "succeeded", None])
def test_a_job_no_longer_waiting_is_skipped(state: str | None) -> None:
    assert POLICY.judge(batch(), candidate(state=state), fits_memory=True) is Verdict.SKIP


@pytest.mark.parametrize("missing", ["width", "height", "cutn", "iterations"])
def test_a_record_missing_a_field_is_skipped(missing: str) -> None:
    assert POLICY.judge(batch(), candidate(**{missing: None}), fits_memory=True) is Verdict.SKIP


def test_another_size_stops_the_growth_to_keep_the_queue_order() -> None:
    assert POLICY.judge(batch(), candidate(width=128), fits_memory=True) is Verdict.STOP


def test_a_job_that_does_not_fit_in_memory_stops_the_growth() -> None:
    assert POLICY.judge(batch(), candidate(), fits_memory=False) is Verdict.STOP


def test_nobody_joins_before_the_first_step_is_timed() -> None:
    assert POLICY.judge(batch(step_s=None), candidate(), fits_memory=True) is Verdict.STOP


def test_a_job_that_would_outlast_the_soft_time_limit_stops_the_growth() -> None:
    # One job at 0.4 s a step: a second makes it 0.8 s; 100 iterations take 80 s, 10 s already gone.
    assert POLICY.in_time(batch(jobs=1, elapsed_s=10.0, step_s=0.4), 100)  # 90 s: just within 0.9 x 100 s
    late = batch(jobs=1, elapsed_s=11.0, step_s=0.4)
    assert not POLICY.in_time(late, 100)
    assert POLICY.judge(late, candidate(), fits_memory=True) is Verdict.STOP


def test_room_is_what_the_batch_size_leaves() -> None:
    assert [POLICY.room(n) for n in (0, 1, 3, 4, 5)] == [4, 3, 1, 0, 0]
