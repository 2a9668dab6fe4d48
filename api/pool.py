"""A bounded Redis connection pool whose callers beyond its size wait their turn, first come first served."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError


class FairConnectionPool(ConnectionPool):
    """At most `max_connections` connections; a caller beyond them waits up to `wait_s` seconds, in order.

    redis-py's BlockingConnectionPool bounds the same way, but a newcomer may take a freed connection
    ahead of callers already waiting, and every take and return passes a lock and a condition, each a
    trip through the event loop when contended. With 50 clients polling one API process through 32
    connections, the unlucky request waited several such trips: `GET /v1/jobs/{id}` had a p99 1.6x the
    floor's, its p50 equal to it. Here a turn is one step of asyncio's Semaphore, which lets nobody
    pass the queue and gives a cancelled waiter's turn to the next."""

    def __init__(self, *, wait_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait_s = wait_s
        self._turns = asyncio.Semaphore(self.max_connections)

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        # (redis-py's signature: arguments it deprecated and ignores)
        try:
            async with asyncio.timeout(self.wait_s):
                await self._turns.acquire()
        except TimeoutError:
            raise ConnectionError("No connection available.") from None
        # Within a turn there is always a connection to take: an idle one, or room to make one.
        connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            self._turns.release()
