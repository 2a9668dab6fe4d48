"""Running one job end to end: read its record, paint with the engine, write progress and the result.

`run_job` is a plain function (the Celery task only wraps it), so it can be tested without a broker.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
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
from worker.progress import JobLock, ProgressReporter, publish_event

if TYPE_CHECKING:
    import redis

    from worker.engine import Painter

log = logging.getLogger(__name__)


class JobError(Exception):
    """A failure that belongs to the job (bad stored input, missing weights): reported, not retried."""


class _HandedBack(Exception):
    """The worker is shutting down: the job was checkpointed and must go back to the queue."""


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
    """Run a queued job (or resume one whose worker died); returns its state afterwards, None if unknown."""
    keys = Keys(settings.redis_prefix)
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
        try:
            state = _paint(client, keys, settings, record, worker_name, store)
            error = None
        except _HandedBack:
            return _hand_back(client, keys, record, requeue)
        except JobError as exc:
            state, error = JobState.FAILED, str(exc)
        except SoftTimeLimitExceeded:
            state, error = JobState.FAILED, f"time limit of {settings.soft_time_limit_s} s exceeded"
        except Exception as exc:  # any engine bug: the job ends failed with a reason, the worker lives on
            log.exception("job %s failed", job_id)
            state, error = JobState.FAILED, f"internal error ({type(exc).__name__}): {exc}"
        final = _finish(client, keys, settings, job_id, state, error)
    finally:
        lock.release()
    if final is JobState.SUCCEEDED:
        _store_timelapse(client, keys, settings, job_id, store)
    return final


def _paint(
    client: redis.Redis, keys: Keys, settings: Settings, record: JobRecord, worker: str, store: ResultStore
) -> JobState:
    from worker.engine import GenerationConfig, Painter, png_bytes
    from worker.models import ChecksumMismatch, ModelsMissing, get_models
    from worker.runtime import EngineOptions

    job_id = record.id
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
        init_image=_stored_image(client, keys.init_image(job_id)) if record.has_init_image else None,
        init_weight=record.init_weight,
        image_prompts=[
            _stored_image(client, keys.image_prompt(job_id, i)) for i in range(record.image_prompt_count)
        ],
    )
    try:
        painter = Painter(models, config, EngineOptions.from_settings(settings))
    except (PromptSyntaxError, ValueError) as exc:
        raise JobError(f"invalid job parameters: {exc}") from exc
    _resume(client, keys, painter, job_id)

    reporter = ProgressReporter(client, keys, job_id, settings, record.preview_every, worker)
    canceled = False
    try:
        while painter.iteration < config.iterations:
            if reporter.should_cancel():
                canceled = True
                break
            if reporter.handback_requested:
                _save_checkpoint(client, keys, settings, painter, job_id)
                raise _HandedBack
            reporter(painter.step())
            if painter.iteration % settings.checkpoint_every == 0 and painter.iteration < config.iterations:
                _save_checkpoint(client, keys, settings, painter, job_id)
    finally:
        # Every frame submitted so far lands before the job is reported finished.
        reporter.frames.close()
    if canceled:
        log.info("job %s canceled at iteration %d", job_id, painter.iteration)
        return JobState.CANCELED

    metadata = {
        "prompt": record.prompt,
        "seed": str(painter.seed),
        "model": record.model,
        "iterations": str(painter.iteration),
        "size": f"{record.width}x{record.height}",
        "job_id": job_id,
    }
    result = png_bytes(painter.image(), metadata)
    # The durable copy first: a job is only `succeeded` once its picture outlives Redis.
    store.put(result_key(job_id), result, "image/png")
    client.set(keys.result(job_id), result, ex=settings.job_ttl_s)
    return JobState.SUCCEEDED


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
