"""The API's Redis pool on a real redis-server: bounded, first come first served, a clear error on timeout."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from api.pool import FairConnectionPool


def _run(
    test: Callable[[FairConnectionPool], Awaitable[Any]],
    url: str,
    size: int,
    wait_s: float = 5,
    **kwargs: Any,
) -> Any:
    async def main() -> Any:
        pool = FairConnectionPool.from_url(url, max_connections=size, wait_s=wait_s, **kwargs)
        try:
            return await test(pool)
        finally:
            await pool.aclose()

    # A thread of its own: in the whole suite, the browser tests' Playwright keeps a loop running here.
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, main()).result()


async def _settle() -> None:
    """Let every task that can run, run (and queue wherever it waits)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_waiters_are_served_in_arrival_order_and_newcomers_queue_behind_them(stack: Any) -> None:
    async def check(pool: FairConnectionPool) -> list[str]:
        held = [await pool.get_connection(), await pool.get_connection()]
        served: list[str] = []

        async def take(name: str) -> None:
            connection = await pool.get_connection()
            served.append(name)
            await asyncio.sleep(0.01)
            await pool.release(connection)

        early = [asyncio.create_task(take(name)) for name in ("a", "b", "c")]
        await _settle()
        assert served == []  # both connections held: all three wait
        await pool.release(held.pop())
        # A newcomer arriving in the same tick as the release must not take the freed connection.
        late = asyncio.create_task(take("newcomer"))
        await pool.release(held.pop())
        await asyncio.gather(*early, late)
        return served

    assert _run(check, stack.redis_url, size=2) == ["a", "b", "c", "newcomer"]


def test_many_callers_share_at_most_the_pool_size_of_connections(stack: Any) -> None:
    name = f"pooltest-{uuid.uuid4().hex[:8]}"
    sizes: list[int] = []

    async def check(pool: FairConnectionPool) -> list[Any]:
        client = Redis(connection_pool=pool)
        key = f"{name}:counter"

        async def call(i: int) -> Any:
            value = await client.incr(key)
            if i % 10 == 0:
                sizes.append(len(pool._in_use_connections) + len(pool._available_connections))
            return value

        values = await asyncio.gather(*(call(i) for i in range(200)))
        clients = await client.client_list()
        await client.delete(key)
        return [values, [c for c in clients if c.get("name") == name]]

    values, connected = _run(check, stack.redis_url, size=3, client_name=name)
    assert sorted(values) == list(range(1, 201))  # every call answered, none twice
    assert 1 <= len(connected) <= 3
    assert max(sizes) <= 3


def test_a_caller_past_the_wait_gets_a_redis_connection_error_and_the_turn_is_not_lost(stack: Any) -> None:
    async def check(pool: FairConnectionPool) -> bool:
        connection = await pool.get_connection()
        with pytest.raises(redis.exceptions.ConnectionError, match="No connection available"):
            await pool.get_connection()
        await pool.release(connection)
        again = await asyncio.wait_for(pool.get_connection(), 1)
        await pool.release(again)
        return True

    assert _run(check, stack.redis_url, size=1, wait_s=0.2)


def test_a_cancelled_waiter_passes_its_turn_to_the_next(stack: Any) -> None:
    async def check(pool: FairConnectionPool) -> AbstractConnection:
        held = await pool.get_connection()
        gone = asyncio.create_task(pool.get_connection())
        kept = asyncio.create_task(pool.get_connection())
        await _settle()
        gone.cancel()
        await _settle()
        await pool.release(held)
        connection = await asyncio.wait_for(kept, 1)
        assert gone.cancelled()
        await pool.release(connection)
        return connection

    assert _run(check, stack.redis_url, size=1) is not None
