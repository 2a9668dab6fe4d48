"""Which queued job may join a running batch: a pure policy over plain facts, with no Redis or torch.

Growth follows the queue's order. Jobs join from its front while they are compatible (same picture size;
the queue already fixes the model), fit in memory and would finish within the task's time limit at the
batch's pace, so nobody joins before the first step has been timed. An incompatible job at the front
stops the growth, so the worker turns to it once the batch drains.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from shared.jobs import JobState


class Verdict(Enum):
    JOIN = "join"
    SKIP = "skip"  # not waiting any more (canceled, expired, being taken): look past it
    STOP = "stop"  # waiting but may not join now: nobody behind it may either, to keep the order


@dataclass(frozen=True)
class Candidate:
    """A job at the front of the queue, as its record says."""

    job_id: str
    state: str | None
    width: int | None
    height: int | None
    cutn: int | None
    iterations: int | None


@dataclass(frozen=True)
class BatchView:
    """What the policy needs to know of the running batch."""

    width: int
    height: int
    jobs: int
    elapsed_s: float  # since the batch began
    step_s: float | None  # smoothed seconds of one batch step; None until the first step


@dataclass(frozen=True)
class AdmissionPolicy:
    batch_size: int
    soft_time_limit_s: float

    def room(self, jobs: int) -> int:
        """How many more jobs a batch of `jobs` jobs may take."""
        return max(0, self.batch_size - jobs)

    def judge(self, batch: BatchView, candidate: Candidate, fits_memory: bool) -> Verdict:
        """Whether `candidate` joins `batch`; `fits_memory` is the memory budget's answer for it."""
        c = candidate
        if c.state != JobState.QUEUED.value or c.iterations is None or None in (c.width, c.height, c.cutn):
            return Verdict.SKIP
        if (c.width, c.height) != (batch.width, batch.height):
            return Verdict.STOP
        if not fits_memory or not self.in_time(batch, c.iterations):
            return Verdict.STOP
        return Verdict.JOIN

    def in_time(self, batch: BatchView, iterations: int) -> bool:
        """Whether a job of `iterations` would finish within the soft time limit at the batch's pace."""
        if batch.step_s is None or batch.jobs == 0:
            return False  # the pace is unknown until the first step: newcomers join from the second
        n = batch.jobs
        projected = batch.elapsed_s + iterations * batch.step_s * (n + 1) / n
        return projected <= 0.9 * self.soft_time_limit_s
