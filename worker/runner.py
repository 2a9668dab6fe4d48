"""Running jobs end to end: claim them, paint them (several together when they fit), write the results.

`run_job` is a plain function (the Celery task only wraps it), so it can be tested without a broker. It
claims the job it was given and, while the batch has room (`ARTGEN_BATCH_SIZE`, and memory measured by
`worker.batching`), compatible jobs from the front of the same queue: same model and picture size. They are
stepped together by the engine's `BatchPainter`, each with its own latent, optimiser, seed, progress,
previews, cancel, checkpoints and result. The Celery messages of jobs claimed this way arrive later and
find them finished or locked, and do nothing.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from shared.images import timelapse_webp
from shared.jobs import EventType, JobRecord, JobState, queue_for
from shared.keys import Keys
from shared.prompts import PromptSyntaxError
from shared.settings import Settings
from shared.stats import record_finished
from shared.storage import ResultStore, result_key, timelapse_key
from shared.transitions import FINISH_IF_RUNNING, REQUEUE_IF_RUNNING, START_IF_RUNNABLE
from worker.batching import MemoryBudget, Shape, budget_for
from worker.progress import JobLock, ProgressReporter, publish_event

if TYPE_CHECKING:
    import redis

    from worker.engine import BatchPainter, Painter

log = logging.getLogger(__name__)


class JobError(Exception):
    """A failure that belongs to the job (bad stored input, missing weights): reported, not retried."""


# Puts a job id back on its model's queue (the Celery task passes `send_task`).
Requeue = Callable[[str, str], None]


def run_job(
    client: redis.Redis,
    settings: Settings,
    job_id: str,
    worker_name: str,
    requeue: Requeue,
    store: ResultStore,
) -> JobState | None:
    """Run a queued job (or resume one whose worker died), with any compatible jobs that can join it.

    Returns the given job's state afterwards, None if it is unknown.
    """
    keys = Keys(settings.redis_prefix)
    claimed = _claim(client, keys, settings, job_id, worker_name)
    if not isinstance(claimed, _Job):
        return claimed
    return _Batch(client, keys, settings, worker_name, requeue, store).run(claimed)[job_id]


@dataclass
class _Job:
    """A job this worker has claimed: started in Redis, its lock held."""

    record: JobRecord
    lock: JobLock
    began: float = field(default_factory=time.monotonic)
    painter: Painter | None = None
    reporter: ProgressReporter | None = None


def _claim(
    client: redis.Redis, keys: Keys, settings: Settings, job_id: str, worker_name: str
) -> _Job | JobState | None:
    """Take a job: its lock, then queued/running -> running. Otherwise say what state it is in."""
    raw = client.hgetall(keys.job(job_id))
    if not raw:
        log.warning("job %s has no record (expired or never written); dropping it", job_id)
        return None
    record = JobRecord.from_redis(raw)
    if record.state.terminal:
        log.info("job %s is already %s; nothing to do", job_id, record.state)
        return record.state

    lock = JobLock(client, keys, job_id, owner=worker_name, ttl_s=settings.lock_ttl_s)
    if not lock.acquire():
        # Another worker holds it: this is a duplicate delivery of a job that is still running.
        log.info("job %s is running on another worker; not starting it twice", job_id)
        return JobState.RUNNING
    claimed = False
    try:
        if record.attempts >= settings.max_attempts:
            error = f"gave up after {record.attempts} attempts (the worker died each time)"
            return _finish(client, keys, settings, job_id, JobState.FAILED, error)
        if not client.eval(START_IF_RUNNABLE, 1, keys.job(job_id), time.time(), worker_name):
            return JobRecord.from_redis(client.hgetall(keys.job(job_id))).state
        pipe = client.pipeline(transaction=True)
        pipe.zrem(keys.queued(queue_for(record.model)), job_id)
        pipe.sadd(keys.running(), job_id)
        pipe.execute()
        claimed = True
        return _Job(record, lock)
    finally:
        if not claimed:
            lock.release()


class _Batch:
    """The jobs one worker paints together: one model and picture size, one engine step for all.

    A job leaves when it finishes, fails, is canceled or is handed back; the others go on unchanged.
    Growth follows the queue's order: jobs join from its front while they are compatible, fit in memory
    and would finish within the task's time limit at the batch's pace (so nobody joins before the first
    step has been timed); an incompatible job at the front stops the growth, so the worker turns to it
    once the batch drains.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        settings: Settings,
        worker: str,
        requeue: Requeue,
        store: ResultStore,
    ) -> None:
        self.client, self.keys, self.settings = client, keys, settings
        self.worker, self.requeue, self.store = worker, requeue, store
        self.jobs: list[_Job] = []
        self.states: dict[str, JobState] = {}
        self.began = time.monotonic()
        self.step_s: float | None = None  # smoothed wall time of one batch step
        self._painters: BatchPainter | None = None
        self._budget: MemoryBudget | None = None
        self._shape: Shape | None = None
        self._timelapses = ThreadPoolExecutor(max_workers=1, thread_name_prefix="timelapse")

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, first: _Job) -> dict[str, JobState]:
        """Paint `first` and whoever joins until every job has left; each job's final state by id."""
        try:
            if self._admit(first):
                assert self._budget is not None
                self._budget.start_batch()
                self._loop()
        except SoftTimeLimitExceeded:
            self._time_limit_reached()
        except Exception as exc:  # an engine bug: every job of the batch ends failed with the reason
            log.exception("batch of %d job(s) failed", len(self.jobs))
            for job in list(self.jobs):
                self._end(job, JobState.FAILED, f"internal error ({type(exc).__name__}): {exc}")
        finally:
            for job in list(self.jobs):  # only after an interruption: the reaper requeues them
                self._leave(job)
            self._timelapses.shutdown(wait=True)
        return self.states

    def _loop(self) -> None:
        settings = self.settings
        while self.jobs:
            if any(job.reporter is not None and job.reporter.handback_requested for job in self.jobs):
                # The worker is shutting down: every job goes back to the queue at this boundary.
                for job in list(self.jobs):
                    self._hand_back(job)
                return
            self._top_up()
            for job in list(self.jobs):
                assert job.reporter is not None
                if job.reporter.should_cancel():
                    log.info("job %s canceled at iteration %d", job.record.id, self._painter(job).iteration)
                    self._end(job, JobState.CANCELED)
            if not self.jobs:
                return

            assert self._painters is not None and self._budget is not None and self._shape is not None
            stepping = list(self.jobs)
            started = time.perf_counter()
            self._budget.before_step()
            infos = self._painters.step()
            self._budget.after_step(self._shape, sum(self._painter(j).config.cutn for j in stepping))
            dt = time.perf_counter() - started
            self.step_s = dt if self.step_s is None else 0.8 * self.step_s + 0.2 * dt

            for job, info in zip(stepping, infos, strict=True):
                painter = self._painter(job)
                try:
                    assert job.reporter is not None
                    job.reporter(info)
                    if painter.iteration >= painter.config.iterations:
                        self._complete(job)
                    elif painter.iteration % settings.checkpoint_every == 0:
                        _save_checkpoint(self.client, self.keys, settings, painter, job.record.id)
                except Exception as exc:  # this job's bookkeeping failed; the others go on
                    log.exception("job %s failed", job.record.id)
                    self._end(job, JobState.FAILED, f"internal error ({type(exc).__name__}): {exc}")

    # --- joining ----------------------------------------------------------------------------------

    def _admit(self, job: _Job) -> bool:
        """Build the job's painter (resuming its checkpoint) and add it to the batch."""
        try:
            painter = self._build_painter(job.record)
            _resume(self.client, self.keys, painter, job.record.id)
        except JobError as exc:
            self._end(job, JobState.FAILED, str(exc))
            return False
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:
            log.exception("job %s failed", job.record.id)
            self._end(job, JobState.FAILED, f"internal error ({type(exc).__name__}): {exc}")
            return False
        job.painter = painter
        job.reporter = ProgressReporter(
            self.client, self.keys, job.record.id, self.settings, job.record.preview_every, self.worker
        )
        if self._painters is None:
            from worker.engine import BatchPainter

            record = job.record
            self._painters = BatchPainter(painter.models)
            self._budget = budget_for(painter.device, self.settings.batch_memory_fraction)
            self._shape = (record.model, record.width, record.height)
        self._painters.add(painter)
        self.jobs.append(job)
        self._note_batch_size()
        return True

    def _top_up(self) -> None:
        """Claim compatible jobs from the front of the queue while the batch has room for them."""
        room = self.settings.batch_size - len(self.jobs)
        if room <= 0 or self._shape is None or self._budget is None:
            return
        model, width, height = self._shape
        front = self.client.zrange(self.keys.queued(queue_for(model)), 0, room - 1)
        if not front:
            return
        pipe = self.client.pipeline(transaction=False)
        for raw_id in front:
            pipe.hmget(self.keys.job(raw_id.decode()), "state", "width", "height", "cutn", "iterations")
        for raw_id, (state, w, h, cutn, iterations) in zip(front, pipe.execute(), strict=True):
            if state != JobState.QUEUED.value.encode() or None in (w, h, cutn, iterations):
                continue  # canceled, expired, or being taken by another worker this moment
            if (int(w), int(h)) != (width, height):
                return  # keep the queue's order: this job goes next, after the batch
            if not self._budget.fits(self._shape, int(cutn)) or not self._in_time(int(iterations)):
                return
            claimed = _claim(self.client, self.keys, self.settings, raw_id.decode(), self.worker)
            if isinstance(claimed, _Job):
                self._admit(claimed)

    def _in_time(self, iterations: int) -> bool:
        """Whether a job of `iterations` would finish within the task's soft time limit at today's pace."""
        if self.step_s is None:
            return False  # the pace is unknown until the first step: newcomers join from the second
        n = len(self.jobs)
        projected = time.monotonic() - self.began + iterations * self.step_s * (n + 1) / n
        return projected <= 0.9 * self.settings.soft_time_limit_s

    def _note_batch_size(self) -> None:
        n = len(self.jobs)
        if n < 2:
            return
        pipe = self.client.pipeline(transaction=False)
        for job in self.jobs:
            if (job.record.batch or 1) < n:
                job.record.batch = n
                pipe.hset(self.keys.job(job.record.id), "batch", n)
        pipe.execute()

    # --- leaving ----------------------------------------------------------------------------------

    def _complete(self, job: _Job) -> None:
        """Store the finished picture (durable copy first), then announce success."""
        from worker.engine import png_bytes

        record, painter = job.record, self._painter(job)
        assert job.reporter is not None
        job.reporter.frames.close()  # every preview lands before the job is reported finished
        metadata = {
            "prompt": record.prompt,
            "seed": str(painter.seed),
            "model": record.model,
            "iterations": str(painter.iteration),
            "size": f"{record.width}x{record.height}",
            "job_id": record.id,
        }
        result = png_bytes(painter.image(), metadata)
        # The durable copy first: a job is only `succeeded` once its picture outlives Redis.
        self.store.put(result_key(record.id), result, "image/png")
        self.client.set(self.keys.result(record.id), result, ex=self.settings.job_ttl_s)
        if self._end(job, JobState.SUCCEEDED) is JobState.SUCCEEDED:
            # Off the loop: the other jobs of the batch need not wait for a WebP encoder.
            self._timelapses.submit(
                _store_timelapse, self.client, self.keys, self.settings, record.id, self.store
            )

    def _end(self, job: _Job, state: JobState, error: str | None = None) -> JobState:
        """Take the job out of the batch and write its final state."""
        self._leave(job)
        final = _finish(self.client, self.keys, self.settings, job.record.id, state, error)
        self.states[job.record.id] = final
        return final

    def _hand_back(self, job: _Job) -> None:
        """The worker is shutting down: checkpoint the job and return it to the queue."""
        if job.painter is not None:
            _save_checkpoint(self.client, self.keys, self.settings, job.painter, job.record.id)
        self._leave(job)
        self.states[job.record.id] = _hand_back(self.client, self.keys, job.record, self.requeue)

    def _time_limit_reached(self) -> None:
        """The task's soft limit: the job that started the task fails; the ones that joined go back."""
        error = f"time limit of {self.settings.soft_time_limit_s} s exceeded"
        for job in list(self.jobs):
            if job.began - self.began < 1.0:
                self._end(job, JobState.FAILED, error)
            else:
                self._hand_back(job)

    def _leave(self, job: _Job) -> None:
        """Out of the batch: stop its frame writer (pending frames land) and release its lock."""
        if job in self.jobs:
            self.jobs.remove(job)
        if job.painter is not None and self._painters is not None and job.painter in self._painters.painters:
            self._painters.remove(job.painter)
        try:
            if job.reporter is not None:
                job.reporter.frames.close()
        except Exception:  # a frame that failed to store does not change how the job ended
            log.exception("storing the previews of job %s failed", job.record.id)
        finally:
            job.lock.release()

    # --- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _painter(job: _Job) -> Painter:
        assert job.painter is not None
        return job.painter

    def _build_painter(self, record: JobRecord) -> Painter:
        from worker.engine import GenerationConfig, Painter
        from worker.models import ChecksumMismatch, ModelsMissing, get_models
        from worker.runtime import EngineOptions

        settings, client, keys = self.settings, self.client, self.keys
        try:
            models = get_models(record.model, settings.models_dir, settings.device)
        except (ModelsMissing, ChecksumMismatch) as exc:
            raise JobError(str(exc)) from exc
        config = GenerationConfig(
            prompts=record.prompt,
            width=record.width,
            height=record.height,
            iterations=record.iterations,
            seed=record.seed,
            step_size=record.step_size,
            cutn=record.cutn,
            cut_pow=record.cut_pow,
            init_image=_stored_image(client, keys.init_image(record.id)) if record.has_init_image else None,
            init_weight=record.init_weight,
            image_prompts=[
                _stored_image(client, keys.image_prompt(record.id, i))
                for i in range(record.image_prompt_count)
            ],
        )
        try:
            return Painter(models, config, EngineOptions.from_settings(settings))
        except (PromptSyntaxError, ValueError) as exc:
            raise JobError(f"invalid job parameters: {exc}") from exc


def _store_timelapse(
    client: redis.Redis, keys: Keys, settings: Settings, job_id: str, store: ResultStore
) -> None:
    """Keep the time-lapse with the result (after the job is announced: clients need not wait for it)."""
    frames = client.lrange(keys.frames(job_id), 0, -1)
    if not frames:
        return
    try:
        webp = timelapse_webp(frames)
        store.put(timelapse_key(job_id), webp, "image/webp")
        client.set(keys.timelapse(job_id), webp, ex=settings.job_ttl_s)
    except Exception:  # the picture is safe; a missing time-lapse is rebuilt from frames on request
        log.exception("storing the time-lapse of job %s failed", job_id)


def _stored_image(client: redis.Redis, key: str) -> Image.Image:
    data = client.get(key)
    if data is None:
        raise JobError("an uploaded picture of this job has expired from Redis")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        raise JobError(f"an uploaded picture of this job cannot be read: {exc}") from exc


def _save_checkpoint(
    client: redis.Redis, keys: Keys, settings: Settings, painter: Painter, job_id: str
) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(painter.state_dict(), buffer)
    client.set(keys.checkpoint(job_id), buffer.getvalue(), ex=settings.job_ttl_s)


def _resume(client: redis.Redis, keys: Keys, painter: Painter, job_id: str) -> None:
    import torch

    data = client.get(keys.checkpoint(job_id))
    if data is None:
        return
    # Our own tensors and numbers only: weights_only=True refuses anything else.
    painter.load_state_dict(torch.load(io.BytesIO(data), weights_only=True, map_location="cpu"))
    client.hset(keys.job(job_id), mapping={"resumed_from": painter.iteration, "iteration": painter.iteration})
    log.info("job %s resumed from its checkpoint at iteration %d", job_id, painter.iteration)


def _hand_back(client: redis.Redis, keys: Keys, record: JobRecord, requeue: Requeue) -> JobState:
    """Return a checkpointed job to the queue so another worker resumes it."""
    if client.eval(REQUEUE_IF_RUNNING, 1, keys.job(record.id)):
        pipe = client.pipeline(transaction=True)
        pipe.srem(keys.running(), record.id)
        pipe.zadd(keys.queued(queue_for(record.model)), {record.id: record.created_at})
        pipe.execute()
        requeue(record.id, queue_for(record.model))
        log.info("job %s handed back to the queue (worker shutting down)", record.id)
    return JobState.QUEUED


def _finish(
    client: redis.Redis, keys: Keys, settings: Settings, job_id: str, state: JobState, error: str | None
) -> JobState:
    """Write the final state once (terminal states are never overwritten) and announce it."""
    if client.eval(FINISH_IF_RUNNING, 1, keys.job(job_id), state.value, time.time(), error or ""):
        record = JobRecord.from_redis(client.hgetall(keys.job(job_id)))
        pipe = client.pipeline(transaction=True)
        publish_event(pipe, keys, job_id, EventType.FINISHED, {"state": state.value, "error": error})
        run_s = record.finished_at - record.started_at if record.finished_at and record.started_at else None
        wait_s = record.started_at - record.created_at if record.started_at else None
        record_finished(pipe, keys.stats(), record.model, state.value, run_s, wait_s, record.iteration)
        pipe.delete(keys.checkpoint(job_id))
        pipe.srem(keys.running(), job_id)
        for key in keys.all_for_job(job_id):
            pipe.expire(key, settings.job_ttl_s)
        pipe.execute()
        log.info("job %s %s%s", job_id, state.value, f": {error}" if error else "")
        return state
    final = JobRecord.from_redis(client.hgetall(keys.job(job_id))).state
    log.info("job %s was already %s; keeping that", job_id, final)
    return final
