"""Fan-out of job events to Server-Sent Events watchers: one reader per watched job in this API process.

However many clients watch a job, this process reads the job's event stream once: a reader task started
by the first watcher (and stopped after the last) blocks on `XREAD` over a connection pool of its own,
never the pool that ordinary requests use, and hands each batch to every watcher's own bounded queue.
A watcher that falls behind keeps only what still matters: the newest `progress`, the newest `frame`,
and every `finished` or `error`. Events keep their stream ids, so `Last-Event-ID` resumes as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions
from redis.asyncio import BlockingConnectionPool, Redis
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api.store import JobStore
from shared.jobs import EventType, JobRecord, JobState
from shared.keys import Keys
from shared.settings import Settings

log = logging.getLogger(__name__)

# Events a watcher may have waiting before it skips ahead (each is one small JSON line).
WATCHER_QUEUE_EVENTS = 32
# XREAD blocks in slices this long, so a reader whose last watcher left stops within one slice.
READ_BLOCK_MS = 1000
# Events a reader keeps after handing them out, so a watcher who joins a little behind (its snapshot was
# read just before the latest events) catches up from memory rather than with a Redis read of its own.
READER_HISTORY = 64
# Events one XREAD returns at most; a longer backlog comes in the next read.
READ_COUNT = 100
# Deliveries (one write to one watcher) a reader makes per second, about: with many watchers it pauses
# between deliveries so that progress and frames gather into fewer, larger writes. The pause is at most
# MAX_PAUSE_S (how stale progress may get); `finished` never waits for it.
DELIVERIES_PER_S = 2_500
MAX_PAUSE_S = 2.0
# Watchers woken per turn of the event loop: other requests are served between turns.
FANOUT_SLICE = 25
# A stream with no event this long gets a keepalive comment, and its reader checks (once for all its
# watchers) that the job did not end unannounced or vanish.
HEARTBEAT_S = 15.0
# Connections of the readers' own pool; a reader beyond it waits for one (at most one block slice).
READER_CONNECTIONS = 64
# What a client refused for too many watchers is told to wait before retrying.
WATCHERS_RETRY_AFTER_S = 10
_FINISHED = EventType.FINISHED.value
_ERROR = "error"
_GONE = ""  # an end with nothing to say: the job's record is gone (expired or deleted)
# Ordered after any stream id: a watcher takes such an event whatever it has seen.
_LAST = (1 << 62, 0)


def stream_key(event_id: str) -> tuple[int, int]:
    """A stream id ("<ms>-<seq>") as a tuple that orders as Redis orders ids."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def sse(event: str, data: str, event_id: str | None = None) -> bytes:
    """One Server-Sent Event; `data` is one line of JSON."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a job's event stream, with its SSE bytes encoded once for every watcher."""

    id: str
    name: str
    data: str
    key: tuple[int, int]
    wire: bytes

    @classmethod
    def of(cls, event_id: str, name: str, data: str) -> Event:
        return cls(event_id, name, data, stream_key(event_id), sse(name, data, event_id))

    @property
    def final(self) -> bool:
        return self.name in (_FINISHED, _ERROR, _GONE)


def skip_ahead(events: list[Event]) -> list[Event]:
    """The newest progress, the newest frame and every finished/error event, in stream order."""
    newest: dict[str, Event] = {}
    for event in events:
        if not event.final:
            newest[event.name] = event
    return [e for e in events if e.final or newest.get(e.name) is e]


class WatchersFull(Exception):
    """This process already serves `max_watchers` event streams."""


class Watcher:
    """One client's queue of a job's events: bounded; on overflow it skips ahead to what still matters."""

    def __init__(self, cursor: str, limit: int = WATCHER_QUEUE_EVENTS) -> None:
        # The newest event queued or sent (at first: the client's snapshot or Last-Event-ID); older or
        # repeated ones are ignored, so catching up from two sources never sends one twice.
        self.last_id = cursor
        self.last = stream_key(cursor)
        self.limit = limit
        self.skipped = 0  # events dropped by skipping ahead
        self._events: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None  # a future, not an Event: cheaper to wake

    def put(self, events: list[Event]) -> None:
        for event in events:
            if event.key > self.last:
                self._events.append(event)
                self.last, self.last_id = event.key, event.id
        if len(self._events) > self.limit:
            self._skip_ahead()
        if self._events and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _skip_ahead(self) -> None:
        kept = skip_ahead(list(self._events))
        self.skipped += len(self._events) - len(kept)
        self._events = deque(kept)

    async def next_batch(self, timeout_s: float) -> list[Event]:
        """Every waiting event (waiting up to `timeout_s` for one); [] on timeout."""
        if not self._events:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):  # a timer, not a task per wait as wait_for makes
                    await self._waiter
            except TimeoutError:
                pass
            finally:
                self._waiter = None
        batch = list(self._events)
        self._events.clear()
        return batch

    @property
    def pending(self) -> int:
        return len(self._events)


@dataclass(eq=False)
class _Reader:
    """The one task reading a job's event stream for every watcher of it in this process."""

    job_id: str
    cursor: str  # the id of the last event handed out (or the first watcher's starting point)
    watchers: set[Watcher] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    history: deque[Event] = field(default_factory=lambda: deque(maxlen=READER_HISTORY))
    covered_from: tuple[int, int] = (0, 0)  # `history` holds every event after this id

    def __post_init__(self) -> None:
        self.covered_from = stream_key(self.cursor)

    def handed_out(self, events: list[Event]) -> None:
        for event in events:
            if len(self.history) == self.history.maxlen:
                self.covered_from = self.history[0].key
            self.history.append(event)
        self.cursor = events[-1].id


class EventHub:
    """Every event stream this API process serves: admission (`max_watchers`) and one reader per job."""

    def __init__(self, redis: Redis, keys: Keys, max_watchers: int, *, block_ms: int = READ_BLOCK_MS) -> None:
        self.redis = redis  # the readers' own pool: blocking reads never starve ordinary requests
        self.keys = keys
        self.max_watchers = max_watchers
        self.block_ms = block_ms
        self.admitted = 0  # event streams accepted and not yet ended
        self._readers: dict[str, _Reader] = {}

    @property
    def readers(self) -> int:
        return len(self._readers)

    def admit(self) -> None:
        """Count one more event stream, or raise `WatchersFull`; `release()` when it ends."""
        if self.admitted >= self.max_watchers:
            raise WatchersFull(f"this API process already serves {self.max_watchers} event streams")
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str, cursor: str) -> AsyncIterator[Watcher]:
        """A queue of the job's events after `cursor`, fed by the job's one reader while it is open."""
        watcher = Watcher(cursor)
        while True:
            reader = self._readers.get(job_id)
            if reader is None:
                reader = self._readers[job_id] = _Reader(job_id, watcher.last_id)
                reader.watchers.add(watcher)
                reader.task = asyncio.create_task(self._read(reader), name=f"events-{job_id[:8]}")
                break
            if watcher.last >= reader.covered_from or watcher.last >= stream_key(reader.cursor):
                # What the reader handed out before: from its history; what comes next: from it.
                reader.watchers.add(watcher)
                watcher.put(list(reader.history))
                break
            # From further back (an old Last-Event-ID): read by itself up to about now, then look again.
            backlog = await self._range(job_id, watcher.last_id)
            if not backlog:  # trimmed from the stream meanwhile: nothing more to catch up with
                reader.watchers.add(watcher)
                watcher.put(list(reader.history))
                break
            watcher.put(backlog)
        try:
            yield watcher
        finally:
            reader.watchers.discard(watcher)
            if not reader.watchers and self._readers.get(job_id) is reader:
                # The reader ends at its next turn; a watcher who comes meanwhile starts another.
                del self._readers[job_id]

    async def _range(self, job_id: str, after: str) -> list[Event]:
        reply: Any = await self.redis.xrange(self.keys.events(job_id), min=f"({after}", count=READ_COUNT)
        return [_event(entry_id, fields) for entry_id, fields in reply]

    async def _read(self, reader: _Reader) -> None:
        key = self.keys.events(reader.job_id)
        read_cursor = reader.cursor
        pending: list[Event] = []  # read, not yet handed out (a pause between deliveries)
        next_delivery = 0.0
        quiet_since = time.monotonic()
        try:
            while reader.watchers:
                # While events wait for the next delivery, block only until it is due (at least 1 ms:
                # a block of 0 would wait for ever).
                wait_ms = max(1, int((next_delivery - time.monotonic()) * 1000)) if pending else self.block_ms
                reply: Any = await self.redis.xread({key: read_cursor}, count=READ_COUNT, block=wait_ms)
                events = [
                    _event(entry_id, fields)
                    for _stream, entries in reply or []
                    for entry_id, fields in entries
                ]
                if not events and time.monotonic() - quiet_since >= HEARTBEAT_S:
                    if await self._ended_unannounced(reader):
                        break
                    quiet_since = time.monotonic()
                if events:
                    quiet_since = time.monotonic()
                    read_cursor = events[-1].id
                    pending = skip_ahead(pending + events) if len(pending) > READ_COUNT else pending + events
                finished = any(event.name == _FINISHED for event in events)
                # `finished` goes out at once; progress and frames wait for the next delivery.
                if not pending or (not finished and time.monotonic() < next_delivery):
                    continue
                batch, pending = pending, []
                # The cursor moves with the snapshot of watchers taken here: one who joins after this
                # line catches up by itself (`watch`), one who joined before gets this batch.
                reader.handed_out(batch)
                watchers = list(reader.watchers)
                if finished and self._readers.get(reader.job_id) is reader:
                    del self._readers[reader.job_id]  # a watcher who joins from here on starts its own
                for start in range(0, len(watchers), FANOUT_SLICE):
                    if start:
                        await asyncio.sleep(0)  # let other requests through between slices
                    for watcher in watchers[start : start + FANOUT_SLICE]:
                        watcher.put(batch)
                if finished:
                    break
                next_delivery = time.monotonic() + min(MAX_PAUSE_S, len(watchers) / DELIVERIES_PER_S)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("event reader of job %s stopped: redis unavailable (%s)", reader.job_id, exc)
            self._fail(reader, "redis unavailable; reconnect later")
        except Exception:  # a reader that dies silently would leave its watchers waiting for nothing
            log.exception("event reader of job %s failed", reader.job_id)
            self._fail(reader, "the event reader failed; reconnect later")
        finally:
            if self._readers.get(reader.job_id) is reader:
                del self._readers[reader.job_id]

    def _fail(self, reader: _Reader, detail: str) -> None:
        """Tell every watcher in-band that the stream ends here; clients reconnect with Last-Event-ID."""
        data = json.dumps({"detail": detail})
        self._end(reader, Event("", _ERROR, data, _LAST, sse(_ERROR, data)))

    @staticmethod
    def _end(reader: _Reader, event: Event) -> None:
        for watcher in list(reader.watchers):
            watcher.put([event])

    async def _ended_unannounced(self, reader: _Reader) -> bool:
        """After a quiet spell: end the watchers of a job that ended without a `finished` event we saw
        (or whose record is gone). One read for all of them."""
        state, error = await self.redis.hmget(self.keys.job(reader.job_id), ["state", "error"])
        if state is None:
            self._end(reader, Event("", _GONE, "", _LAST, b""))
            return True
        if not JobState(_text(state)).terminal:
            return False
        data = json.dumps({"state": _text(state), "error": _text(error) if error else None})
        self._end(reader, Event("", _FINISHED, data, _LAST, sse(_FINISHED, data)))
        return True

    async def close(self) -> None:
        """Stop every reader (at shutdown)."""
        tasks = [reader.task for reader in self._readers.values() if reader.task is not None]
        self._readers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _event(entry_id: Any, fields: Any) -> Event:
    return Event.of(
        _text(entry_id),
        _text(fields.get(b"event", fields.get("event", b""))),
        _text(fields.get(b"data", fields.get("data", b"{}"))),
    )


class EventStreamResponse(StreamingResponse):
    """An admitted event stream: its place among `max_watchers` is given back however the response ends
    (finished, client gone, or never started because the client left first)."""

    def __init__(self, content: AsyncIterator[bytes], hub: EventHub) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette streams inside an anyio task group, whose cancellation costs much CPU when thousands
        # of streams end together (`finished`); a plain task listening for the client's disconnect
        # does the same here.
        task = asyncio.current_task()
        assert task is not None
        state = {"streaming": True, "gone": False}

        async def listen_for_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if state["streaming"]:
                state["gone"] = True
                task.cancel()

        listener = asyncio.create_task(listen_for_disconnect())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()  # the client left: the stream ended, the request did not fail
        finally:
            state["streaming"] = False
            listener.cancel()
            self.hub.release()


def make_event_redis(settings: Settings) -> Redis:
    """The readers' own client: a blocking pool (a reader waits for a free connection, never fails)."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=READER_CONNECTIONS,
        timeout=None,
        socket_connect_timeout=2,
        socket_timeout=5,  # above the block slice
        health_check_interval=10,
    )
    return Redis(connection_pool=pool)


async def wait_terminal(
    store: JobStore, hub: EventHub, job_id: str, timeout_s: float, gone: Any = None
) -> JobRecord | None:
    """Wait (through the job's one reader) until the job ends; None after `timeout_s` (or when `gone()`
    says so). The record is re-read on `finished`, and now and then in case an event was missed."""
    deadline = time.monotonic() + timeout_s
    record, cursor = await store.snapshot_with_cursor(job_id)
    if record is None or record.state.terminal:
        return record
    async with hub.watch(job_id, cursor) as watcher:
        last_check = time.monotonic()
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (gone is not None and await gone()):
                return None
            batch = await watcher.next_batch(min(left, 1.0))
            if any(event.final for event in batch) or time.monotonic() - last_check > 5:
                current = await store.record(job_id)
                if current is None or current.state.terminal:
                    return current
                last_check = time.monotonic()
