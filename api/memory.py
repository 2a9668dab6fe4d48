"""How full the data Redis is, so the API refuses new jobs before Redis refuses writes.

Redis runs with `noeviction`: once `used_memory` reaches `maxmemory`, every write fails, progress and
the ends of running jobs included. Above `ARTGEN_REDIS_MEMORY_HIGH` of `maxmemory` the API stops taking
submissions (503 + Retry-After) and `/readyz` says degraded, so the jobs already running can finish and
the finished ones' pictures can expire. With `maxmemory` 0 (no limit) the guard is off.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from fastapi import HTTPException
from redis.asyncio import Redis

log = logging.getLogger(__name__)

# INFO is read at most this often: the hot path must not pay a round trip per request.
MAX_AGE_S = 1.0
# Seconds a refused client should wait: long enough for finished jobs' pictures to leave Redis.
RETRY_AFTER_S = 30


@dataclass(frozen=True, slots=True)
class RedisMemory:
    """One reading of `INFO memory`, with the share above which the API holds back."""

    used: int
    maxmemory: int
    high_fraction: float

    @property
    def limited(self) -> bool:
        return self.maxmemory > 0

    @property
    def high(self) -> bool:
        return self.limited and self.used >= self.high_fraction * self.maxmemory

    def describe(self) -> str:
        if not self.limited:
            return f"redis uses {self.used} bytes (no maxmemory set)"
        return (
            f"redis uses {self.used} of {self.maxmemory} bytes ({self.used / self.maxmemory:.0%}; "
            f"new jobs are refused from {self.high_fraction:.0%})"
        )


class MemoryGauge:
    """`INFO memory` of the data Redis, cached for `max_age_s`."""

    def __init__(self, redis: Redis, high_fraction: float, max_age_s: float = MAX_AGE_S) -> None:
        self._redis = redis
        self._high = high_fraction
        self._max_age = max_age_s
        self._last: RedisMemory | None = None
        self._read_at = 0.0

    async def read(self) -> RedisMemory:
        now = time.monotonic()
        if self._last is None or now - self._read_at >= self._max_age:
            try:
                info: dict[str, Any] = await self._redis.info("memory")
            except redis.exceptions.ResponseError as exc:
                # A Redis that refuses INFO (renamed away on some hosted services): no limit is known.
                if self._last is None:
                    log.warning("redis refuses INFO memory (%s); the memory guard is off", exc)
                info = {}
            self._last = RedisMemory(
                int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)), self._high
            )
            self._read_at = now
        return self._last

    async def refuse_if_high(self) -> None:
        """503 + Retry-After while Redis is above the high-water mark (before it refuses writes)."""
        memory = await self.read()
        if memory.high:
            raise HTTPException(
                503,
                detail=f"the service is near its memory limit ({memory.describe()}); try again later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
