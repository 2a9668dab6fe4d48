"""Test doubles and helpers of the API unit tests (the conftest holds the fixtures)."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import fakeredis
from PIL import Image

from shared.jobs import EVENTS_MAXLEN, EventType, JobRecord
from shared.keys import Keys
from shared.settings import Settings
from shared.transitions import FINISH_IF_RUNNING, START_IF_RUNNABLE

PREFIX = "t"
KEY_A = "a" * 16 + "-first-test-key"
KEY_B = "b" * 16 + "-second-test-key"


class RecordingEnqueuer:
    """Records what would go to the broker; `fail` makes it refuse, as a broker that is away would."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.announced: list[tuple[str, str, str]] = []  # (job id, event, webhook id)
        self.fail = False

    async def enqueue(self, job_id: str, queue: str) -> None:
        if self.fail:
            raise ConnectionRefusedError("broker away")
        self.sent.append((job_id, queue))

    def notify(self, job_id: str, event: str, webhook_id: str) -> None:
        if self.fail:
            raise ConnectionRefusedError("broker away")
        self.announced.append((job_id, event, webhook_id))

    def close(self) -> None:
        pass


def png_bytes(
    size: tuple[int, int] = (32, 32), color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG"
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


class FakeWorker:
    """Writes into Redis exactly what a worker writes (the contract in shared/), from the test's side."""

    def __init__(self, client: fakeredis.FakeRedis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def record(self, job_id: str) -> JobRecord:
        return JobRecord.from_redis(self.client.hgetall(self.keys.job(job_id)))

    def event(self, job_id: str, event: EventType, data: dict[str, Any]) -> None:
        self.client.xadd(
            self.keys.events(job_id),
            {"event": event.value, "data": json.dumps(data)},
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )

    def start(self, job_id: str) -> None:
        assert self.client.eval(START_IF_RUNNABLE, 1, self.keys.job(job_id), time.time(), "w1")
        record = self.record(job_id)
        self.client.zrem(self.keys.queued(f"artgen.{record.model}"), job_id)
        self.client.sadd(self.keys.running(), job_id)

    def progress(self, job_id: str, iteration: int, its: float = 10.0) -> None:
        self.client.hset(self.keys.job(job_id), mapping={"iteration": iteration, "loss": 0.5, "its": its})
        record = self.record(job_id)
        self.event(
            job_id,
            EventType.PROGRESS,
            {"iteration": iteration, "iterations": record.iterations, "loss": 0.5, "its": its},
        )

    def frame(self, job_id: str, png: bytes, iteration: int = 1) -> int:
        self.client.set(self.keys.frame(job_id), png)
        seq = int(self.client.hincrby(self.keys.job(job_id), "frame_seq", 1))
        self.event(job_id, EventType.FRAME, {"seq": seq, "iteration": iteration})
        return seq

    def finish(
        self, job_id: str, state: str = "succeeded", result: bytes | None = None, error: str = ""
    ) -> None:
        if result is not None:
            self.client.set(self.keys.result(job_id), result)
        assert self.client.eval(FINISH_IF_RUNNING, 1, self.keys.job(job_id), state, time.time(), error)
        self.client.srem(self.keys.running(), job_id)
        self.event(job_id, EventType.FINISHED, {"state": state, "error": error or None})

    def heartbeat(self, name: str = "w1@test", age_s: float = 0.0) -> None:
        self.client.hset(
            self.keys.workers(), name, json.dumps({"ts": time.time() - age_s, "models": ["tiny"]})
        )


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_prefix": PREFIX,
        "model": "tiny",
        "max_size": 128,
        "default_size": 64,
        "max_iterations": 500,
        "max_cutn": 16,
        "default_cutn": 8,
        "max_prompt_chars": 300,
        "max_upload_bytes": 64 * 1024,
        "max_upload_pixels": 512 * 512,
        "max_queue_depth": 5,
        "rate_limit_per_minute": 0,
        "blocking_timeout_s": 5.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)
