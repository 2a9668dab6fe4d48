"""One job's life on a worker, one small function per transition.

    claim ──► start ──► (checkpoint)* ──► finish | fail | cancel | hand_back

`claim` takes the job's lock and marks it running; `start` builds everything the job needs to paint (its
painter, resumed from a checkpoint, and its progress reporter) and returns an `ActiveJob`, or ends the
job when it cannot paint. The ends write the job's final state with a Lua script (a terminal state is
never overwritten) and its "finished" facts with `shared.finished.write_finished`, then release the
lock. What a batch does with its jobs is `worker.batch`'s business; nothing here knows about batches.
Webhooks hang off these transitions: `claim` announces "start", the reporter "progress", `_end`
"completed"; each only queues a delivery task (`ctx.notify`), so a slow receiver never costs GPU time.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from shared.deadlines import past_deadline
from shared.finished import announce_finished, write_finished
from shared.images import timelapse_webp
from shared.jobs import CancelReason, JobRecord, JobState, queue_for
from shared.keys import Keys
from shared.manifest import Manifest, ManifestError
from shared.params import InvalidParams, Limits, build_config, png_metadata
from shared.prompts import PromptSyntaxError
from shared.settings import Settings
from shared.storage import ResultStore, result_key, timelapse_key
from shared.transitions import (
    FINISH_IF_RUNNING,
    REQUEUE_IF_RUNNING,
    SET_IF_JOB_EXISTS,
    START_IF_RUNNABLE,
)
from shared.webhooks import Notify, WebhookEvent, announce
from worker.progress import ProgressReporter

if TYPE_CHECKING:
    import redis

    from worker.engine import Painter

log = logging.getLogger(__name__)

# Puts a job id back on its model's queue (the Celery task passes `send_task`).
Requeue = Callable[[str, str], None]

# Compare-and-refresh / compare-and-delete, so a worker never touches a lock another one holds.
_REFRESH_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class JobError(Exception):
    """A failure that belongs to the job (bad stored input, missing weights): reported, not retried."""


def internal_error(exc: BaseException) -> str:
    """The error a job ends with when artgen itself failed (not the job's input)."""
    return f"internal error ({type(exc).__name__}): {exc}"


@dataclass(frozen=True)
class WorkerContext:
    """What every transition needs: Redis and its keys, the settings, this worker, the queue, the store."""

    client: redis.Redis
    settings: Settings
    worker: str
    requeue: Requeue
    store: ResultStore
    notify: Notify | None = None  # queues a webhook delivery; None = webhooks are not announced

    @cached_property
    def keys(self) -> Keys:
        return Keys(self.settings.redis_prefix)


class JobLock:
    """The one-runner-at-a-time lock of a job, refreshed by a thread as the job's heartbeat."""

    def __init__(self, client: redis.Redis, key: str, owner: str, ttl_s: int) -> None:
        self._client, self._key, self._owner, self._ttl = client, key, owner, ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self._client.set(self._key, self._owner, nx=True, ex=self._ttl):
            return False
        self._thread = threading.Thread(target=self._refresh, name="job-lock", daemon=True)
        self._thread.start()
        return True

    def release(self) -> None:
        """Stop refreshing and delete the lock if it is still ours. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._client.eval(_RELEASE_LOCK, 1, self._key, self._owner)

    def _refresh(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            try:
                self._client.eval(_REFRESH_LOCK, 1, self._key, self._owner, self._ttl)
            except Exception as exc:  # Redis briefly away: the next refresh may still land in time
                log.warning("refreshing lock %s failed: %s (at %s)", self._key, exc, time.time())


@dataclass
class Claim:
    """A job this worker has claimed: marked running in Redis, its lock held, not yet painting."""

    record: JobRecord
    lock: JobLock
    began: float  # time.monotonic() of the claim


@dataclass
class ActiveJob(Claim):
    """A claimed job with everything it needs to paint: its painter (resumed) and its reporter."""

    painter: Painter
    reporter: ProgressReporter
    parent_manifest: Manifest | None = None  # an extension's: the chain its manifest continues


# --- claim and start ------------------------------------------------------------------------------


def claim(ctx: WorkerContext, job_id: str) -> Claim | JobState | None:
    """Take a job: its lock, then queued/running -> running. Else the state it is in (None: no record)."""
    client, keys = ctx.client, ctx.keys
    raw = client.hgetall(keys.job(job_id))
    if not raw:
        log.warning("job %s has no record (expired or never written); dropping it", job_id)
        return None
    record = JobRecord.from_redis(raw)
    if record.state.terminal:
        log.info("job %s is already %s; nothing to do", job_id, record.state)
        return record.state

    lock = JobLock(client, keys.lock(job_id), ctx.worker, ctx.settings.lock_ttl_s)
    if not lock.acquire():
        # Another worker holds it: this is a duplicate delivery of a job that is still running.
        log.info("job %s is running on another worker; not starting it twice", job_id)
        return JobState.RUNNING
    taken = Claim(record, lock, time.monotonic())
    if past_deadline(record, time.time()):
        log.info("job %s is past its deadline; it never starts", job_id)
        return _end(ctx, taken, JobState.CANCELED, reason=CancelReason.DEADLINE)
    if record.attempts >= ctx.settings.max_attempts:
        return fail(ctx, taken, f"gave up after {record.attempts} attempts (the worker died each time)")
    if not client.eval(START_IF_RUNNABLE, 1, keys.job(job_id), time.time(), ctx.worker):
        lock.release()
        return JobRecord.from_redis(client.hgetall(keys.job(job_id))).state
    pipe = client.pipeline(transaction=True)
    pipe.zrem(keys.queued(queue_for(record.model)), job_id)
    pipe.sadd(keys.running(), job_id)
    pipe.execute()
    announce(ctx.notify, job_id, record, WebhookEvent.START)
    return taken


def start(ctx: WorkerContext, taken: Claim) -> ActiveJob | JobState:
    """Build the claimed job's painter (resumed from its checkpoint) and reporter; a job that cannot
    paint ends `failed` here, and its final state is returned instead."""
    try:
        painter = _build_painter(ctx, taken.record)
        parent_manifest = _continue_parent(ctx, painter, taken.record)
        _resume(ctx, painter, taken.record.id)
    except JobError as exc:
        return fail(ctx, taken, str(exc))
    except SoftTimeLimitExceeded:
        raise  # the task's time limit: the caller decides what it means for the job
    except Exception as exc:
        log.exception("job %s failed", taken.record.id)
        return fail(ctx, taken, internal_error(exc))
    record = taken.record
    reporter = ProgressReporter(
        ctx.client,
        ctx.keys,
        record.id,
        ctx.settings,
        record.preview_every,
        ctx.worker,
        options=record,
        notify=ctx.notify,
        stages=record.stage_texts,
    )
    return ActiveJob(record, taken.lock, taken.began, painter, reporter, parent_manifest)


# --- while painting -------------------------------------------------------------------------------


def checkpoint(ctx: WorkerContext, job: ActiveJob) -> None:
    """Save the painter's latent and optimiser state, so another worker can resume from here."""
    import torch

    buffer = io.BytesIO()
    torch.save(job.painter.state_dict(), buffer)
    ctx.client.set(ctx.keys.checkpoint(job.record.id), buffer.getvalue(), ex=ctx.settings.job_ttl_s)


def note_batch_size(ctx: WorkerContext, jobs: list[ActiveJob]) -> None:
    """Record on each job the most jobs it has been painted together with (when more than one)."""
    n = len(jobs)
    if n < 2:
        return
    pipe = ctx.client.pipeline(transaction=False)
    for job in jobs:
        if (job.record.batch or 1) < n:
            job.record.batch = n
            pipe.hset(ctx.keys.job(job.record.id), "batch", n)
    pipe.execute()


# --- the ends -------------------------------------------------------------------------------------


def finish(ctx: WorkerContext, job: ActiveJob) -> JobState:
    """Store the finished picture (durable copy first) with its state and manifest, then announce success."""
    from worker import chain
    from worker.engine import png_bytes

    record, painter = job.record, job.painter
    job.reporter.frames.close()  # every preview lands before the job is reported finished
    manifest = chain.build_manifest(record, record.id, painter, ctx.settings, job.parent_manifest)
    # What an extension continues from, and the manifest: kept before the job is `succeeded`.
    chain.keep_final(ctx.store, record, painter, manifest)
    metadata = png_metadata(
        painter.config,
        model=record.model,
        seed=painter.seed,
        iterations=painter.iteration,
        job_id=record.id,
        manifest=manifest.to_json(),
    )
    result = png_bytes(painter.image(), metadata)
    # The durable copy first: a job is only `succeeded` once its picture outlives Redis.
    ctx.store.put(result_key(record.id), result, "image/png")
    # Only for clients that fetch at once: after the job ends, the store serves it.
    ctx.client.set(ctx.keys.result(record.id), result, ex=ctx.settings.finished_bytes_ttl_s)
    return _end(ctx, job, JobState.SUCCEEDED)


def fail(ctx: WorkerContext, job: Claim, error: str) -> JobState:
    return _end(ctx, job, JobState.FAILED, error)


def cancel(ctx: WorkerContext, job: ActiveJob) -> JobState:
    reason = job.reporter.cancel_reason or CancelReason.CLIENT
    log.info("job %s canceled (%s) at iteration %d", job.record.id, reason.value, job.painter.iteration)
    return _end(ctx, job, JobState.CANCELED, reason=reason)


def hand_back(ctx: WorkerContext, job: ActiveJob) -> JobState:
    """The worker is stopping: checkpoint the job and return it to the queue for another worker."""
    client, keys, record = ctx.client, ctx.keys, job.record
    checkpoint(ctx, job)
    _release(job)
    if client.eval(REQUEUE_IF_RUNNING, 1, keys.job(record.id)):
        pipe = client.pipeline(transaction=True)
        pipe.srem(keys.running(), record.id)
        pipe.zadd(keys.queued(queue_for(record.model)), {record.id: record.created_at})
        pipe.execute()
        ctx.requeue(record.id, queue_for(record.model))
        log.info("job %s handed back to the queue (worker shutting down)", record.id)
    return JobState.QUEUED


def abandon(ctx: WorkerContext, job: ActiveJob) -> JobState:
    """Let go of a job whose batch was interrupted: its lock expires and a worker's reaper requeues it."""
    _release(job)
    return JobState.RUNNING


def store_timelapse(ctx: WorkerContext, job_id: str) -> None:
    """Keep the time-lapse with the result (after the job is announced: clients need not wait for it)."""
    frames = ctx.client.lrange(ctx.keys.frames(job_id), 0, -1)
    if not frames:
        return
    try:
        webp = timelapse_webp(frames)
        ctx.store.put(timelapse_key(job_id), webp, "image/webp")
        keys, ttl = ctx.keys, ctx.settings.finished_bytes_ttl_s
        # DELETE removes Redis first, then the store: a record gone now means this copy is ours to remove.
        if not ctx.client.eval(SET_IF_JOB_EXISTS, 2, keys.job(job_id), keys.timelapse(job_id), webp, ttl):
            ctx.store.delete(timelapse_key(job_id))
    except Exception:  # the picture is safe; a missing time-lapse is rebuilt from frames on request
        log.exception("storing the time-lapse of job %s failed", job_id)


def _end(
    ctx: WorkerContext,
    job: Claim,
    state: JobState,
    error: str | None = None,
    reason: CancelReason | None = None,
) -> JobState:
    """Write the final state once (terminal states are never overwritten) and its facts; release the job."""
    client, keys, job_id = ctx.client, ctx.keys, job.record.id
    if isinstance(job, ActiveJob):
        _close_frames(job)
    try:
        now = time.time()
        why = reason.value if reason is not None else ""
        if not client.eval(FINISH_IF_RUNNING, 1, keys.job(job_id), state.value, now, error or "", why):
            raw = client.hgetall(keys.job(job_id))
            if not raw:  # deleted (DELETE /v1/jobs/{id}) while it ended
                log.info("job %s was deleted; nothing to record", job_id)
                return JobState.CANCELED
            final = JobRecord.from_redis(raw).state
            log.info("job %s was already %s; keeping that", job_id, final)
            return final
        record = JobRecord.from_redis(client.hgetall(keys.job(job_id)))
        pipe = client.pipeline(transaction=True)
        ttl_s, bytes_ttl_s = ctx.settings.job_ttl_s, ctx.settings.finished_bytes_ttl_s
        write_finished(pipe, keys, record, state, error, now, ttl_s, bytes_ttl_s=bytes_ttl_s)
        pipe.delete(keys.checkpoint(job_id))
        pipe.srem(keys.running(), job_id)
        pipe.execute()
        log.info("job %s %s%s", job_id, state.value, f": {error}" if error else "")
        announce_finished(ctx.notify, record)
        return state
    finally:
        job.lock.release()


def _release(job: ActiveJob) -> None:
    """Let go of a job without ending it: pending previews land, the lock is released."""
    _close_frames(job)
    job.lock.release()


def _close_frames(job: ActiveJob) -> None:
    try:
        job.reporter.frames.close()
    except Exception:  # a frame that failed to store does not change how the job ended
        log.exception("storing the previews of job %s failed", job.record.id)


# --- building a painter ---------------------------------------------------------------------------


def _build_painter(ctx: WorkerContext, record: JobRecord) -> Painter:
    from worker.engine import Painter
    from worker.models import ChecksumMismatch, ModelsMissing, get_models
    from worker.runtime import EngineOptions

    settings, client, keys = ctx.settings, ctx.client, ctx.keys
    try:
        models = get_models(record.model, settings.models_dir, settings.device)
    except (ModelsMissing, ChecksumMismatch) as exc:
        raise JobError(str(exc)) from exc
    init_image = _stored_image(client, keys.init_image(record.id)) if record.has_init_image else None
    count = record.image_prompt_count
    prompts = [_stored_image(client, keys.image_prompt(record.id, i)) for i in range(count)]
    # The API held the job to the service's limits when it was accepted; here only its structure is
    # checked (a worker with other limits still paints what was accepted), and the engine adds its factor.
    try:
        config = build_config(
            settings,
            prompt=record.prompt,
            model=record.model,
            width=record.width,
            height=record.height,
            iterations=record.iterations,
            cutn=record.cutn,
            seed=record.seed,
            cut_pow=record.cut_pow,
            step_size=record.step_size,
            init_weight=record.init_weight,
            init_image=init_image,
            image_prompts=prompts,
            init=record.init,
            change_every=record.change_every,
            optimizer=record.optimizer,
            plateau_window=record.plateau_window,
            plateau_delta=record.plateau_delta,
            limits=Limits(),
        )
        return Painter(models, config, EngineOptions.from_settings(settings))
    except (InvalidParams, PromptSyntaxError, ValueError) as exc:
        raise JobError(f"invalid job parameters: {exc}") from exc


def _continue_parent(ctx: WorkerContext, painter: Painter, record: JobRecord) -> Manifest | None:
    """An extension starts from its parent's kept final state; the parent's manifest."""
    from worker.chain import ParentGone, continue_parent

    try:
        return continue_parent(ctx.store, painter, record)
    except (ParentGone, ManifestError) as exc:
        raise JobError(f"cannot continue the parent job: {exc}") from exc


def _stored_image(client: redis.Redis, key: str) -> Image.Image:
    data = client.get(key)
    if data is None:
        raise JobError("an uploaded picture of this job has expired from Redis")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        raise JobError(f"an uploaded picture of this job cannot be read: {exc}") from exc


def _resume(ctx: WorkerContext, painter: Painter, job_id: str) -> None:
    import torch

    data = ctx.client.get(ctx.keys.checkpoint(job_id))
    if data is None:
        return
    # Our own tensors and numbers only: weights_only=True refuses anything else.
    painter.load_state_dict(torch.load(io.BytesIO(data), weights_only=True, map_location="cpu"))
    ctx.client.hset(
        ctx.keys.job(job_id), mapping={"resumed_from": painter.iteration, "iteration": painter.iteration}
    )
    log.info("job %s resumed from its checkpoint at iteration %d", job_id, painter.iteration)
