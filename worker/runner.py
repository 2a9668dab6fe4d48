"""Running jobs end to end: the job a task was given, and the compatible jobs that join it as a batch.

`run_job` is a plain function (the Celery task only wraps it), so it can be tested without a broker. It
claims and starts the job it was given (`worker.lifecycle`), then paints it in a `Batch`: while the batch
has room, compatible jobs from the front of the same queue join it, as `worker.admission` decides. They
are stepped together by the engine's `BatchPainter`, each with its own latent, optimiser, seed, progress,
previews, cancel, checkpoints and result. The Celery messages of jobs claimed this way arrive later and
find them finished or locked, and do nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from celery.exceptions import SoftTimeLimitExceeded

from shared.jobs import JobState, queue_for
from shared.settings import Settings
from shared.storage import ResultStore
from shared.webhooks import Notify
from worker import lifecycle
from worker.admission import AdmissionPolicy, BatchView, Candidate, Verdict
from worker.batching import budget_for
from worker.lifecycle import ActiveJob, Claim, JobError, Requeue, WorkerContext

if TYPE_CHECKING:
    import redis

__all__ = ["JobError", "run_job"]

log = logging.getLogger(__name__)


def run_job(
    client: redis.Redis,
    settings: Settings,
    job_id: str,
    worker_name: str,
    requeue: Requeue,
    store: ResultStore,
    notify: Notify | None = None,
) -> JobState | None:
    """Run a queued job (or resume one whose worker died), with any compatible jobs that can join it.

    Returns the given job's state afterwards, None if it is unknown.
    """
    ctx = WorkerContext(client, settings, worker_name, requeue, store, notify)
    taken = lifecycle.claim(ctx, job_id)
    if not isinstance(taken, Claim):
        return taken
    try:
        first = lifecycle.start(ctx, taken)
    except SoftTimeLimitExceeded:
        return lifecycle.fail(ctx, taken, _time_limit_error(settings))
    if not isinstance(first, ActiveJob):
        return first
    return Batch(ctx, first).run()[job_id]


def _time_limit_error(settings: Settings) -> str:
    return f"time limit of {settings.soft_time_limit_s} s exceeded"


class Batch:
    """The jobs one worker paints together: one model and picture size, one engine step for all.

    A job leaves when it finishes, fails, is canceled or is handed back; the others go on unchanged.
    """

    def __init__(self, ctx: WorkerContext, first: ActiveJob) -> None:
        from worker.engine import BatchPainter

        settings = ctx.settings
        self.ctx = ctx
        self.policy = AdmissionPolicy(settings.batch_size, settings.soft_time_limit_s)
        self.record = first.record  # the job the task was given: it alone fails at the time limit
        self.jobs: list[ActiveJob] = []
        self.states: dict[str, JobState] = {}
        self.began = time.monotonic()
        self.step_s: float | None = None  # smoothed wall time of one batch step
        self.painters = BatchPainter(first.painter.models)
        self.budget = budget_for(first.painter.device, settings.batch_memory_fraction)
        self.shape = (first.record.model, first.record.width, first.record.height)
        self._timelapses = ThreadPoolExecutor(max_workers=1, thread_name_prefix="timelapse")
        self._add(first)

    def run(self) -> dict[str, JobState]:
        """Paint until every job has left; each job's final state by id."""
        try:
            self.budget.start_batch()
            self._loop()
        except SoftTimeLimitExceeded:
            error = _time_limit_error(self.ctx.settings)
            for job in list(self.jobs):
                if job.record.id == self.record.id:
                    self._leave(job, lifecycle.fail, error)
                else:  # it joined later and may finish elsewhere, from its checkpoint
                    self._leave(job, lifecycle.hand_back)
        except Exception as exc:  # an engine bug: every job of the batch ends failed with the reason
            log.exception("batch of %d job(s) failed", len(self.jobs))
            for job in list(self.jobs):
                self._leave(job, lifecycle.fail, lifecycle.internal_error(exc))
        finally:
            for job in list(self.jobs):  # only when ending them failed too (Redis away, say)
                self._leave(job, lifecycle.abandon)
            self._timelapses.shutdown(wait=True)
        return self.states

    def _loop(self) -> None:
        while self.jobs:
            if any(job.reporter.handback_requested for job in self.jobs):
                # The worker is shutting down: every job goes back to the queue at this boundary.
                for job in list(self.jobs):
                    self._leave(job, lifecycle.hand_back)
                return
            self._top_up()
            for job in list(self.jobs):
                if job.reporter.should_cancel():
                    self._leave(job, lifecycle.cancel)
            if self.jobs:
                self._step()

    def _step(self) -> None:
        """One engine step for every job, then each job's progress and, when due, its end or checkpoint."""
        stepping = list(self.jobs)
        started = time.perf_counter()
        self.budget.before_step()
        infos = self.painters.step()
        self.budget.after_step(self.shape, sum(job.painter.config.cutn for job in stepping))
        dt = time.perf_counter() - started
        self.step_s = dt if self.step_s is None else 0.8 * self.step_s + 0.2 * dt

        for job, info in zip(stepping, infos, strict=True):
            painter = job.painter
            try:
                job.reporter(info)
                if painter.finished:  # every iteration, or the loss plateaued
                    if self._leave(job, lifecycle.finish) is JobState.SUCCEEDED:
                        # Off the loop: the other jobs of the batch need not wait for a WebP encoder.
                        self._timelapses.submit(lifecycle.store_timelapse, self.ctx, job.record.id)
                elif painter.iteration % self.ctx.settings.checkpoint_every == 0:
                    lifecycle.checkpoint(self.ctx, job)
            except Exception as exc:  # this job's bookkeeping failed; the others go on
                log.exception("job %s failed", job.record.id)
                self._leave(job, lifecycle.fail, lifecycle.internal_error(exc))

    def _top_up(self) -> None:
        """Claim jobs from the front of the queue while the policy lets them join."""
        room = self.policy.room(len(self.jobs))
        if room <= 0:
            return
        joining_cutouts = 0
        for candidate in self._front(room):
            fits = self.budget.fits(self.shape, joining_cutouts + (candidate.cutn or 0))
            verdict = self.policy.judge(self._view(), candidate, fits)
            if verdict is Verdict.STOP:
                return
            if verdict is Verdict.SKIP:
                continue
            taken = lifecycle.claim(self.ctx, candidate.job_id)
            if not isinstance(taken, Claim):
                continue  # another worker took it this moment
            started = lifecycle.start(self.ctx, taken)
            if isinstance(started, ActiveJob):
                self._add(started)
                joining_cutouts += started.painter.config.cutn
            else:
                self.states[candidate.job_id] = started

    def _front(self, count: int) -> list[Candidate]:
        """The first `count` jobs of this batch's queue, as their records say."""
        client, keys = self.ctx.client, self.ctx.keys
        front = [raw.decode() for raw in client.zrange(keys.queued(queue_for(self.shape[0])), 0, count - 1)]
        pipe = client.pipeline(transaction=False)
        for job_id in front:
            pipe.hmget(keys.job(job_id), "state", "width", "height", "cutn", "iterations")
        return [
            Candidate(job_id, _text(state), _int(w), _int(h), _int(cutn), _int(iterations))
            for job_id, (state, w, h, cutn, iterations) in zip(front, pipe.execute(), strict=True)
        ]

    def _view(self) -> BatchView:
        _, width, height = self.shape
        return BatchView(width, height, len(self.jobs), time.monotonic() - self.began, self.step_s)

    def _add(self, job: ActiveJob) -> None:
        self.painters.add(job.painter)
        self.jobs.append(job)
        lifecycle.note_batch_size(self.ctx, self.jobs)

    def _leave(self, job: ActiveJob, end: Callable[..., JobState], *args: str) -> JobState:
        """Take the job out of the batch, then end it (or hand it back) with `end`."""
        if job in self.jobs:
            self.jobs.remove(job)
            self.painters.remove(job.painter)
        state = end(self.ctx, job, *args)
        self.states[job.record.id] = state
        return state


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def _int(value: bytes | None) -> int | None:
    return int(value) if value is not None else None
