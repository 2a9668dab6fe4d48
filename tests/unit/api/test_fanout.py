"""The event fan-out: one reader per watched job, bounded watcher queues, admission (`max_watchers`)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import fakeredis
import pytest
from fastapi.testclient import TestClient

from api import fanout
from api.fanout import WATCHER_QUEUE_EVENTS, WATCHERS_RETRY_AFTER_S, Event, EventHub, Watcher, stream_key
from shared.jobs import EventType
from shared.keys import Keys
from tests.unit.api.support import PREFIX, FakeWorker

T = TypeVar("T")
KEYS = Keys(PREFIX)
JOB = "f" * 32


def run(main: Callable[[], Awaitable[T]]) -> T:
    """asyncio.run on a thread of its own (the browser tests' Playwright may hold the main thread's loop)."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, main()).result()  # type: ignore[arg-type]


def event(seq: int, name: str = "progress", **data: Any) -> Event:
    return Event.of(f"{1000 + seq}-0", name, json.dumps({"iteration": seq, **data}))


def test_stream_ids_order_as_redis_orders_them() -> None:
    assert stream_key("999-5") < stream_key("1000-0") < stream_key("1000-1") < stream_key("10000-0")
    assert stream_key("0-0") == (0, 0)


def test_a_watcher_takes_only_events_after_its_cursor() -> None:
    watcher = Watcher("1002-0")
    watcher.put([event(1), event(2), event(3), event(4)])
    batch = run(lambda: watcher.next_batch(0.1))
    assert [e.id for e in batch] == ["1003-0", "1004-0"]
    assert watcher.last == stream_key("1004-0")
    watcher.put([event(4)])  # handed out again (a second reader): not sent twice
    assert watcher.pending == 0


def test_a_slow_watcher_skips_ahead_to_the_newest_progress_and_frame_and_keeps_finished() -> None:
    watcher = Watcher("0-0")
    stream = []
    for seq in range(1, 1001):
        stream.append(event(seq, "frame" if seq % 5 == 0 else "progress"))
    stream.append(event(1001, "finished", state="succeeded"))
    for start in range(0, len(stream), 7):  # as a reader hands them out, batch by batch
        watcher.put(stream[start : start + 7])
        assert watcher.pending <= WATCHER_QUEUE_EVENTS
    batch = run(lambda: watcher.next_batch(0.1))
    names = [e.name for e in batch]
    assert names.count("finished") == 1 and batch[-1].name == "finished"
    assert {"progress", "frame"} <= set(names)
    # What survives of each kind is the newest of it; nothing comes out of order.
    assert max(e.key for e in batch if e.name == "progress") == stream_key("1999-0")
    assert max(e.key for e in batch if e.name == "frame") == stream_key("2000-0")
    assert [e.key for e in batch] == sorted(e.key for e in batch)
    assert watcher.skipped == len(stream) - len(batch)


def test_a_full_queue_never_drops_finished() -> None:
    watcher = Watcher("0-0", limit=4)
    watcher.put([event(1, "finished", state="failed")])
    watcher.put([event(seq) for seq in range(2, 50)])
    batch = run(lambda: watcher.next_batch(0.1))
    assert batch[0].name == "finished" and len(batch) <= 4


def test_a_watcher_with_nothing_waits_then_returns_empty() -> None:
    watcher = Watcher("0-0")
    start = time.monotonic()
    assert run(lambda: watcher.next_batch(0.2)) == []
    assert time.monotonic() - start >= 0.19


def _writer(server: fakeredis.FakeServer) -> FakeWorker:
    return FakeWorker(fakeredis.FakeRedis(server=server), KEYS)


def test_many_watchers_of_one_job_share_one_reader() -> None:
    server = fakeredis.FakeServer()
    writer = _writer(server)

    async def main() -> tuple[list[list[str]], int, int]:
        hub = EventHub(fakeredis.FakeAsyncRedis(server=server), KEYS, max_watchers=1000, block_ms=100)

        async def watch() -> list[str]:
            seen: list[str] = []
            async with hub.watch(JOB, "0-0") as watcher:
                while not seen or seen[-1] != "finished":
                    seen.extend(e.name for e in await watcher.next_batch(5))
            return seen

        tasks = [asyncio.create_task(watch()) for _ in range(250)]
        await asyncio.sleep(0.05)
        readers = hub.readers
        for iteration in range(1, 4):
            writer.event(JOB, EventType.PROGRESS, {"iteration": iteration})
        writer.event(JOB, EventType.FINISHED, {"state": "succeeded", "error": None})
        seen = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await asyncio.sleep(0.2)
        await hub.close()
        return seen, readers, hub.readers

    seen, readers_while_watched, readers_after = run(main)
    assert readers_while_watched == 1
    assert all(names == ["progress", "progress", "progress", "finished"] for names in seen)
    assert readers_after == 0


def test_a_watcher_from_further_back_catches_up_then_follows_the_shared_reader() -> None:
    server = fakeredis.FakeServer()
    writer = _writer(server)
    writer.event(JOB, EventType.PROGRESS, {"iteration": 1})
    first_id = writer.client.xrange(KEYS.events(JOB))[0][0].decode()
    writer.event(JOB, EventType.PROGRESS, {"iteration": 2})
    newest = writer.client.xrevrange(KEYS.events(JOB), count=1)[0][0].decode()

    async def main() -> tuple[list[int], list[int], int]:
        hub = EventHub(fakeredis.FakeAsyncRedis(server=server), KEYS, max_watchers=10, block_ms=100)
        async with hub.watch(JOB, newest) as ahead:
            writer.event(JOB, EventType.PROGRESS, {"iteration": 3})
            first = await ahead.next_batch(5)  # the reader has now handed out iteration 3
            # A client reconnecting with Last-Event-ID = the first event: iterations 2 and 3 from its own
            # read, everything later from the shared reader, each once and in order.
            async with hub.watch(JOB, first_id) as behind:
                readers = hub.readers
                writer.event(JOB, EventType.PROGRESS, {"iteration": 4})
                writer.event(JOB, EventType.FINISHED, {"state": "succeeded", "error": None})
                got: list[Event] = []
                while not got or got[-1].name != "finished":
                    got.extend(await behind.next_batch(5))
            rest = [*first]
            while rest[-1].name != "finished":
                rest.extend(await ahead.next_batch(5))
        await hub.close()
        iterations = [json.loads(e.data).get("iteration", 0) for e in got]
        return iterations, [json.loads(e.data).get("iteration", 0) for e in rest], readers

    behind, ahead, readers = run(main)
    assert readers == 1
    assert behind == [2, 3, 4, 0]
    assert ahead == [3, 4, 0]


def test_watchers_are_told_when_redis_goes_away() -> None:
    server = fakeredis.FakeServer()

    async def main() -> list[Event]:
        hub = EventHub(fakeredis.FakeAsyncRedis(server=server), KEYS, max_watchers=10, block_ms=50)
        async with hub.watch(JOB, "0-0") as watcher:
            await asyncio.sleep(0.1)
            server.connected = False
            batch = await watcher.next_batch(5)
        await hub.close()
        return batch

    batch = run(main)
    assert [e.name for e in batch] == ["error"] and batch[0].final
    assert "redis unavailable" in json.loads(batch[0].data)["detail"]


def test_admission_counts_streams_up_to_max_watchers() -> None:
    hub = EventHub(fakeredis.FakeAsyncRedis(), KEYS, max_watchers=2)
    hub.admit()
    hub.admit()
    with pytest.raises(Exception, match="already serves 2 event streams"):
        hub.admit()
    hub.release()
    hub.admit()
    assert hub.admitted == 2


def test_beyond_max_watchers_events_answer_503_with_retry_after(
    make_client: Callable[..., TestClient], worker: FakeWorker
) -> None:
    client = make_client(max_watchers=2)
    job_id = client.post("/v1/jobs", json={"prompt": "a fox"}).json()["id"]
    hub = client.app.state.events  # type: ignore[attr-defined]
    url = f"/v1/jobs/{job_id}/events"
    with client.stream("GET", url) as first, client.stream("GET", url) as second:
        assert first.status_code == second.status_code == 200
        refused = client.get(url)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == str(WATCHERS_RETRY_AFTER_S)
        assert "2 event streams" in refused.json()["detail"]
        assert "GET /v1/jobs/{id}" in refused.json()["detail"]
        # Ordinary requests are not limited.
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
        assert hub.admitted == 2

        def finish() -> None:
            time.sleep(0.2)
            worker.start(job_id)
            worker.finish(job_id, "succeeded")

        thread = threading.Thread(target=finish, daemon=True)
        thread.start()
        assert "event: finished" in "".join(first.iter_text())
        assert "event: finished" in "".join(second.iter_text())
        thread.join()
    deadline = time.monotonic() + 5
    while hub.admitted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hub.admitted == 0  # each stream's place was given back
    with client.stream("GET", url) as again:  # the finished job: snapshot and finished at once
        assert again.status_code == 200 and "event: finished" in "".join(again.iter_text())


def test_with_many_watchers_progress_is_gathered_but_finished_goes_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two watchers at 4 deliveries a second: a pause of 0.5 s between deliveries.
    monkeypatch.setattr(fanout, "DELIVERIES_PER_S", 4)
    server = fakeredis.FakeServer()
    writer = _writer(server)

    async def main() -> tuple[list[list[str]], list[float]]:
        hub = EventHub(fakeredis.FakeAsyncRedis(server=server), KEYS, max_watchers=10, block_ms=100)
        batches: list[list[str]] = []
        gaps: list[float] = []
        async with hub.watch(JOB, "0-0") as watcher, hub.watch(JOB, "0-0"):
            writer.event(JOB, EventType.PROGRESS, {"iteration": 1})
            batches.append([e.name for e in await watcher.next_batch(5)])
            delivered = time.monotonic()
            for iteration in (2, 3, 4):
                writer.event(JOB, EventType.PROGRESS, {"iteration": iteration})
            batches.append([e.name for e in await watcher.next_batch(5)])
            gaps.append(time.monotonic() - delivered)
            writer.event(JOB, EventType.PROGRESS, {"iteration": 5})
            written = time.monotonic()
            writer.event(JOB, EventType.FINISHED, {"state": "succeeded", "error": None})
            batches.append([e.name for e in await watcher.next_batch(5)])
            gaps.append(time.monotonic() - written)
        await hub.close()
        return batches, gaps

    batches, (gathered_after, finished_after) = run(main)
    assert batches == [["progress"], ["progress"] * 3, ["progress", "finished"]]
    assert gathered_after >= 0.45  # progress waited for the next delivery ...
    assert finished_after < 0.3  # ... `finished` did not


def test_a_quiet_reader_ends_its_watchers_when_the_job_ended_unannounced_or_vanished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fanout, "HEARTBEAT_S", 0.3)
    server = fakeredis.FakeServer()
    writer = _writer(server)
    other = "e" * 32
    writer.client.hset(KEYS.job(JOB), mapping={"state": "running"})
    writer.client.hset(KEYS.job(other), mapping={"state": "running"})

    async def main() -> tuple[list[Event], list[Event], list[Event]]:
        hub = EventHub(fakeredis.FakeAsyncRedis(server=server), KEYS, max_watchers=10, block_ms=50)
        async with hub.watch(JOB, "0-0") as ended, hub.watch(other, "0-0") as vanished:
            early = await ended.next_batch(0.5)  # quiet, but the job goes on: nothing
            # A job's end whose event never came (written by hand), and a record that expired.
            writer.client.hset(KEYS.job(JOB), mapping={"state": "failed", "error": "worker lost"})
            writer.client.delete(KEYS.job(other))
            return early, await ended.next_batch(5), await vanished.next_batch(5)

    early, ended, vanished = run(main)
    assert early == []
    assert [(e.name, json.loads(e.data)) for e in ended] == [
        ("finished", {"state": "failed", "error": "worker lost"})
    ]
    assert len(vanished) == 1 and vanished[0].final and vanished[0].wire == b""
