"""The job record's Redis encoding and derived values, and the queue naming."""

from __future__ import annotations

import pytest

from shared.jobs import JobRecord, JobState, queue_for

PARAMS = {
    "prompt": "a fox",
    "model": "tiny",
    "width": 64,
    "height": 48,
    "iterations": 40,
    "seed": 7,
    "cutn": 8,
}


def test_round_trip_through_redis_text() -> None:
    record = JobRecord(id="ab" * 16, has_init_image=True, image_prompt_count=2, loss=0.25, **PARAMS)
    raw = record.to_redis()
    assert all(isinstance(v, str) for v in raw.values())
    assert raw["has_init_image"] == "1" and "error" not in raw and "started_at" not in raw
    as_bytes = {k.encode(): v.encode() for k, v in raw.items()}
    assert JobRecord.from_redis(as_bytes) == record
    assert JobRecord.from_redis(raw) == record


def test_worker_updates_decode() -> None:
    raw = JobRecord(id="cd" * 16, **PARAMS).to_redis()
    raw.update({"state": "running", "iteration": "10", "its": "5.0", "frame_seq": "3", "attempts": "1"})
    record = JobRecord.from_redis(raw)
    assert record.state is JobState.RUNNING and record.frame_seq == 3
    assert record.progress == 0.25 and record.eta_seconds == 6.0


@pytest.mark.parametrize(
    ("state", "terminal"),
    [("queued", False), ("running", False), ("succeeded", True), ("failed", True), ("canceled", True)],
)
def test_terminal_states(state: str, terminal: bool) -> None:
    assert JobState(state).terminal is terminal


def test_eta_only_while_running_with_a_rate() -> None:
    record = JobRecord(id="ef" * 16, iteration=40, its=2.0, **PARAMS)
    assert record.eta_seconds is None  # queued
    assert record.model_copy(update={"state": JobState.RUNNING}).eta_seconds == 0.0
    assert record.model_copy(update={"state": JobState.RUNNING, "its": None}).eta_seconds is None
    assert record.progress == 1.0


def test_one_queue_per_model() -> None:
    assert queue_for("tiny") == "artgen.tiny" != queue_for("imagenet-16384")
