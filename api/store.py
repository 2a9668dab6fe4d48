"""The API's reads and writes of job state in Redis; every key comes from `shared.keys.Keys`."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from api.schemas import JobLinks, JobView, WebhookDelivery
from shared.deadlines import past_deadline
from shared.finished import announce_finished, write_finished
from shared.jobs import CallerOptions, CancelReason, JobParams, JobRecord, JobState, queue_for
from shared.keys import Keys
from shared.model_facts import MODEL_FACTS, MODEL_NOTES
from shared.settings import Settings
from shared.storage import ResultStore, job_store_keys, result_key
from shared.transitions import CANCEL_IF_QUEUED, FINISH_IF_RUNNING
from shared.webhooks import Notify

# The record and, while it is queued, its place in its model's queue: one round trip for GET /v1/jobs/{id}.
# KEYS: the record, then the queue of each model in ARGV[3..]; ARGV: job id, the queued state, models.
# The rank is false when the job is not queued (or not in its queue), -1 when its model has no queue here.
# The record comes as one JSON array (field, value, ...): one string to read instead of two per field,
# which were most of the client's work per request.
_READ_WITH_RANK = """
local record = redis.call('HGETALL', KEYS[1])
if #record == 0 then return {false, false} end
local rank = false
local state_model = redis.call('HMGET', KEYS[1], 'state', 'model')
if state_model[1] == ARGV[2] then
  rank = -1
  for i = 3, #ARGV do
    if ARGV[i] == state_model[2] then rank = redis.call('ZRANK', KEYS[i - 1], ARGV[1]) end
  end
end
return {cjson.encode(record), rank}
"""

# The record and its latest frame, unless the client holds that frame already (ARGV: the frame numbers
# its If-None-Match names): one round trip for GET /v1/jobs/{id}/frame. KEYS: the record, the frame.
# The record as one JSON array, as above.
_READ_WITH_FRAME = """
local record = redis.call('HGETALL', KEYS[1])
if #record == 0 then return {false, false} end
local seq = redis.call('HGET', KEYS[1], 'frame_seq')
local json = cjson.encode(record)
if not seq or seq == '0' then return {json, false} end
for i = 1, #ARGV do
  if ARGV[i] == seq then return {json, false} end
end
return {json, redis.call('GET', KEYS[2])}
"""


class ResultStoreUnavailable(Exception):
    """The result store did not answer a read (finished jobs' pictures are served from it)."""


def links(job_id: str) -> JobLinks:
    base = f"/v1/jobs/{job_id}"
    return JobLinks(
        self_=base,
        frame=f"{base}/frame",
        result=f"{base}/result",
        events=f"{base}/events",
        cancel=f"{base}/cancel",
        deliveries=f"{base}/deliveries",
    )


def view_of(record: JobRecord, queue_position: int | None, now: float | None = None) -> JobView:
    """The client's view of a record (timings derived here, so the worker writes only timestamps)."""
    now = time.time() if now is None else now
    if record.started_at is not None:
        queue_wait: float | None = record.started_at - record.created_at
        run: float | None = (record.finished_at or now) - record.started_at
    else:
        queue_wait = (record.finished_at or now) - record.created_at
        run = None
    return JobView(
        id=record.id,
        status=record.state,
        model=record.model,
        note=record.note,
        prompt=record.prompt,
        width=record.width,
        height=record.height,
        cutn=record.cutn,
        iterations=record.iterations,
        iteration=record.iteration,
        progress=record.progress,
        its=record.its,
        eta_seconds=record.eta_seconds,
        queue_position=queue_position,
        seed=record.seed,
        loss=record.loss,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        queue_wait_s=queue_wait,
        run_s=run,
        attempts=record.attempts,
        worker=record.worker,
        resumed_from=record.resumed_from,
        batch=record.batch,
        error=record.error,
        links=links(record.id),
        webhook=record.webhook,
        webhook_events_filter=record.webhook_event_list if record.webhook else None,
        deadline_at=record.deadline_at,
        cancel_reason=record.cancel_reason,
    )


@dataclass(frozen=True, slots=True)
class JobStore:
    redis: Redis
    keys: Keys
    settings: Settings
    results: ResultStore  # durable copies of results and time-lapses, beyond Redis
    notify: Notify | None = None  # queues a webhook delivery (blocking: called off the event loop)
    # Made once here, not per request: the scripts of the one-round-trip reads and the queues they rank in.
    _read_with_rank: AsyncScript = field(init=False, repr=False)
    _read_with_frame: AsyncScript = field(init=False, repr=False)
    _rank_models: tuple[str, ...] = field(init=False, repr=False)
    _rank_queues: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # a frozen dataclass: fields derived once, at construction
        set_(self, "_read_with_rank", self.redis.register_script(_READ_WITH_RANK))
        set_(self, "_read_with_frame", self.redis.register_script(_READ_WITH_FRAME))
        set_(self, "_rank_models", tuple(MODEL_FACTS))
        set_(self, "_rank_queues", tuple(self.keys.queued(queue_for(model)) for model in MODEL_FACTS))

    async def blob(self, key: str) -> bytes | None:
        """A stored picture (frame, result, upload), or None."""
        value: Any = await self.redis.get(key)
        return bytes(value) if value is not None else None

    async def durable(self, redis_key: str, store_key: str) -> bytes | None:
        """From Redis while it has it, else from the result store (after a Redis restart or expiry)."""
        cached = await self.blob(redis_key)
        if cached is not None:
            return cached
        # boto3 and disk reads block: off the event loop.
        try:
            data: bytes | None = await anyio.to_thread.run_sync(self.results.get, store_key)
        except Exception as exc:  # S3 or the disk away: a 503 for the client, not a 500
            raise ResultStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return data

    async def latest_frame(self, record: JobRecord) -> bytes | None:
        """The job's latest frame; once a succeeded job's bytes have left Redis, its result (the final
        frame), from the result store."""
        frame = await self.blob(self.keys.frame(record.id)) if record.frame_seq else None
        if frame is None and record.state is JobState.SUCCEEDED:
            frame = await self.durable(self.keys.result(record.id), result_key(record.id))
        return frame

    def bytes_ttl_left(self, record: JobRecord, now: float | None = None) -> int:
        """Seconds a finished job's bytes have left in Redis (for copies made after its end)."""
        ttl = self.settings.finished_bytes_ttl_s
        if record.finished_at is None:
            return ttl
        now = time.time() if now is None else now
        return max(1, min(ttl, int(record.finished_at + ttl - now)))

    async def record(self, job_id: str) -> JobRecord | None:
        raw = await self.redis.hgetall(self.keys.job(job_id))
        return JobRecord.from_redis(raw) if raw else None

    async def record_with_position(self, job_id: str) -> tuple[JobRecord | None, int | None]:
        """The record and its queue position (None unless queued), in one round trip."""
        raw, rank = await self._read_with_rank(
            keys=[self.keys.job(job_id), *self._rank_queues],
            args=[job_id, JobState.QUEUED.value, *self._rank_models],
        )
        if raw is None:
            return None, None
        record = JobRecord.from_redis(_pairs(json.loads(raw)))
        if rank == -1:  # a model without a preset here (a record from another version): ask apart
            return record, await self.queue_position(record)
        return record, None if rank is None else int(rank) + 1

    async def record_with_frame(
        self, job_id: str, held_seqs: list[str]
    ) -> tuple[JobRecord | None, bytes | None]:
        """The record and the latest frame in Redis, in one round trip; no frame when there is none yet
        or its number is in `held_seqs` (the client has it)."""
        raw, frame = await self._read_with_frame(
            keys=[self.keys.job(job_id), self.keys.frame(job_id)], args=held_seqs
        )
        if raw is None:
            return None, None
        return JobRecord.from_redis(_pairs(json.loads(raw))), None if frame is None else bytes(frame)

    async def queue_position(self, record: JobRecord) -> int | None:
        if record.state is not JobState.QUEUED:
            return None
        rank: Any = await self.redis.zrank(self.keys.queued(queue_for(record.model)), record.id)
        return None if rank is None else int(rank) + 1

    async def view(self, record: JobRecord) -> JobView:
        return view_of(record, await self.queue_position(record))

    async def rate_limited(self, caller: str, limit: int, now: float | None = None) -> int | None:
        """Count one submission in the caller's current minute; seconds to wait if over `limit`."""
        now = time.time() if now is None else now
        window = int(now // 60)
        key = self.keys.rate(caller, window)
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = await pipe.execute()
        return None if int(count) <= limit else max(1, (window + 1) * 60 - int(now))

    async def running_its(self) -> dict[str, float]:
        """Iterations per second of every running job, summed per model."""
        ids = [
            i.decode() if isinstance(i, bytes) else i for i in await self.redis.smembers(self.keys.running())
        ]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.keys.job(job_id), ["model", "its", "state"])
        totals: dict[str, float] = {}
        for model, its, state in await pipe.execute():
            if model is None or its is None or _text(state) != JobState.RUNNING.value:
                continue
            totals[_text(model)] = totals.get(_text(model), 0.0) + float(_text(its))
        return totals

    async def queue_depth(self, model: str) -> int:
        return int(await self.redis.zcard(self.keys.queued(queue_for(model))))

    async def create(
        self,
        params: JobParams,
        owner: str,
        init_png: bytes | None,
        prompt_pngs: list[bytes],
        options: CallerOptions | None = None,
        idempotency_value: str | None = None,
    ) -> JobRecord:
        """Write the record, its uploads and its index entries in one MULTI; the caller enqueues it.

        With `options.idempotency_key`, that key is set to `idempotency_value` + ":" + the job id in the
        same MULTI, so a retried request finds the job as soon as the job exists.
        """
        keys, ttl = self.keys, self.settings.job_ttl_s
        options = options or CallerOptions()
        record = JobRecord(
            **params.model_dump(),
            **options.model_dump(),
            id=uuid.uuid4().hex,
            owner=owner,
            note=MODEL_NOTES.get(params.model),
        )
        job_id, created = record.id, record.created_at
        pipe = self.redis.pipeline(transaction=True)
        if init_png is not None:
            pipe.set(keys.init_image(job_id), init_png, ex=ttl)
        for index, png in enumerate(prompt_pngs):
            pipe.set(keys.image_prompt(job_id, index), png, ex=ttl)
        fields: dict[Any, Any] = record.to_redis()
        pipe.hset(keys.job(job_id), mapping=fields)
        pipe.expire(keys.job(job_id), ttl)
        indexes = [keys.recent(), keys.queued(queue_for(params.model))]
        if owner:
            indexes.append(keys.owner_jobs(owner))
        for index_key in indexes:
            pipe.zadd(index_key, {job_id: created})
            # Entries older than a job's lifetime point at expired records: trim them as we go.
            pipe.zremrangebyscore(index_key, "-inf", created - ttl)
            pipe.expire(index_key, ttl)
        if record.deadline_at is not None:
            pipe.zadd(keys.deadlines(), {job_id: record.deadline_at})
        if record.idempotency_key is not None and idempotency_value is not None:
            pipe.set(
                record.idempotency_key, f"{idempotency_value}:{job_id}", ex=self.settings.idempotency_ttl_s
            )
        await pipe.execute()
        return record

    async def _finished_here(self, record: JobRecord, state: JobState, error: str | None, now: float) -> None:
        """The facts of an end this API made (the state is already written), then its "completed" webhook."""
        pipe = self.redis.pipeline(transaction=True)
        settings = self.settings
        write_finished(
            pipe,
            self.keys,
            record,
            state,
            error,
            now,
            settings.job_ttl_s,
            bytes_ttl_s=settings.finished_bytes_ttl_s,
        )
        await pipe.execute()
        if self.notify is not None:
            # Publishing to the broker blocks: off the event loop.
            await anyio.to_thread.run_sync(announce_finished, self.notify, record)

    async def fail_unqueued(self, record: JobRecord, error: str) -> None:
        """The broker refused the job: end it `failed` with the reason, so it is not silently lost."""
        now = time.time()
        if await self.redis.eval(
            FINISH_IF_RUNNING, 1, self.keys.job(record.id), JobState.FAILED.value, now, error
        ):
            await self._finished_here(record, JobState.FAILED, error, now)

    async def cancel(self, record: JobRecord, reason: CancelReason = CancelReason.CLIENT) -> bool:
        """Flag the job for its worker; a queued one is canceled here at once. True if this call ended it."""
        keys, now = self.keys, time.time()
        if reason is CancelReason.CLIENT:
            # The worker reads the flag as a client's cancel; a deadline it watches by itself.
            await self.redis.set(keys.cancel(record.id), "1", ex=self.settings.job_ttl_s)
        if not await self.redis.eval(CANCEL_IF_QUEUED, 1, keys.job(record.id), now, reason.value):
            return False
        await self._finished_here(record, JobState.CANCELED, None, now)
        return True

    async def enforce_deadline(self, record: JobRecord) -> JobRecord:
        """A queued job read past its deadline is canceled now (the sweep may not have come yet)."""
        if record.state is not JobState.QUEUED or not past_deadline(record, time.time()):
            return record
        await self.cancel(record, CancelReason.DEADLINE)
        return await self.record(record.id) or record

    async def delete(self, record: JobRecord) -> bool:
        """Cancel the job if unfinished, wait until no worker holds it, then remove every key of it from
        Redis and every object of it from the result store. False when its worker has not let go within
        `lock_ttl_s` (nothing is removed then; the caller may try again)."""
        keys, job_id = self.keys, record.id
        if not record.state.terminal:
            await self.cancel(record)
        give_up = time.monotonic() + self.settings.lock_ttl_s
        while True:
            current = await self.record(job_id)
            if current is None:
                return True  # another DELETE removed it meanwhile
            held = bool(await self.redis.exists(keys.lock(job_id)))
            if current.state.terminal and not held:
                break
            if not held:
                # Running with no worker holding it (its worker died) or just handed back: end it here.
                now = time.time()
                ended = await self.redis.eval(
                    FINISH_IF_RUNNING, 1, keys.job(job_id), JobState.CANCELED.value, now, "", "client"
                )
                if ended:
                    await self._finished_here(current, JobState.CANCELED, None, now)
                continue
            if time.monotonic() > give_up:
                return False
            await anyio.sleep(0.1)
        # The store first (if it is away: a 503 with nothing removed, and DELETE can be tried again),
        await self._delete_stored(job_id)
        doomed = keys.every_key_of_job(job_id, current.image_prompt_count)
        if current.idempotency_key is not None:
            doomed.append(current.idempotency_key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(*doomed)
        for index in (keys.recent(), keys.owner_jobs(current.owner), keys.queued(queue_for(current.model))):
            pipe.zrem(index, job_id)
        pipe.zrem(keys.deadlines(), job_id)
        pipe.srem(keys.running(), job_id)
        await pipe.execute()
        # and again after Redis: a copy stored in between (a time-lapse) is gone too; one stored later
        # finds no record, and its writer removes it.
        await self._delete_stored(job_id)
        return True

    async def _delete_stored(self, job_id: str) -> None:
        for store_key in job_store_keys(job_id):
            try:
                await anyio.to_thread.run_sync(self.results.delete, store_key)
            except Exception as exc:  # S3 or the disk away: a 503 for the client, not a 500
                raise ResultStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """The job's webhook delivery attempts, oldest first."""
        raw = await self.redis.lrange(self.keys.deliveries(job_id), 0, -1)
        return [WebhookDelivery.model_validate_json(entry) for entry in raw]

    def _index(self, owner: str) -> str:
        return self.keys.owner_jobs(owner) if owner else self.keys.recent()

    async def list_ids(self, owner: str, limit: int, offset: int) -> tuple[list[str], int]:
        index = self._index(owner)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrevrange(index, offset, offset + limit - 1)
        pipe.zcard(index)
        ids, total = await pipe.execute()
        return [i.decode() if isinstance(i, bytes) else i for i in ids], int(total)

    async def records(self, job_ids: list[str]) -> list[JobRecord]:
        """Records of these ids, in order; expired ones are left out."""
        if not job_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [JobRecord.from_redis(raw) for raw in await pipe.execute() if raw]

    async def latest(self, owner: str) -> str | None:
        """The caller's most recent job (with keys off: the most recent of all)."""
        ids, _ = await self.list_ids(owner, 1, 0)
        return ids[0] if ids else None

    async def snapshot_with_cursor(self, job_id: str) -> tuple[JobRecord | None, str]:
        """The record and the id of the newest event, read atomically, so a stream misses nothing."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.keys.job(job_id))
        pipe.xrevrange(self.keys.events(job_id), count=1)
        raw, newest = await pipe.execute()
        cursor = newest[0][0] if newest else b"0-0"
        return (JobRecord.from_redis(raw) if raw else None), (
            cursor.decode() if isinstance(cursor, bytes) else cursor
        )

    async def workers(self) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self.keys.workers())
        out: dict[str, dict[str, Any]] = {}
        for name, value in raw.items():
            try:
                beat = json.loads(value)
            except ValueError:
                continue  # a malformed heartbeat is no heartbeat
            if isinstance(beat, dict):
                out[_text(name)] = beat
        return out


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    """An HGETALL reply as a flat list (field, value, field, value...) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
