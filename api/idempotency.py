"""`Idempotency-Key` on the submitting routes: a retried submit returns the job the first one made.

Scoped per caller (the API key; with keys off, the client address, as the rate limit scopes callers) and
kept `ARTGEN_IDEMPOTENCY_TTL_S` (24 h). The first request takes the key with `SET NX` (atomic: of any
number of concurrent duplicates exactly one goes on), holding the request's fingerprint; the job is
written together with `fingerprint:job id` in one MULTI (`JobStore.create`). A repeat with the same
fingerprint gets that job (waiting briefly while the first is still being accepted); a different body
under the same key is a 422. A first request that is refused lets go of the key, so it can be retried.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import HTTPException

from api.store import JobStore
from api.validation import invalid

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
# How long a repeat waits for the first request of its key to create the job before answering 409.
WAIT_FOR_FIRST_S = 10.0
# A key taken by a request that died before writing its job is free again after this.
PENDING_TTL_S = 60

# Compare-and-delete: only a key still pending with our fingerprint is let go.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Reservation:
    redis_key: str
    fingerprint: str
    replay_of: str | None  # the job the first request with this key made; None: this request goes on


def fingerprint(*parts: Any) -> str:
    """A digest of what makes two requests "the same" (route, parsed body, picture digests, headers)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def _check(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in key):
        raise invalid(
            [
                {
                    "loc": ("header", HEADER),
                    "msg": f"{HEADER} must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
                    "type": "value_error",
                }
            ]
        )
    return key


async def reserve(store: JobStore, scope: str, key: str, request_fingerprint: str) -> Reservation:
    """Take the key for this request, or find the job an earlier request with it made."""
    key_hash = hashlib.sha256(_check(key).encode()).hexdigest()[:32]
    redis_key = store.keys.idempotency(scope, key_hash)
    give_up = time.monotonic() + WAIT_FOR_FIRST_S
    while True:
        if await store.redis.set(redis_key, request_fingerprint, nx=True, ex=PENDING_TTL_S):
            return Reservation(redis_key, request_fingerprint, None)
        value: Any = await store.redis.get(redis_key)
        if value is None:
            continue  # the first request let go of it this moment: take it
        held, _, job_id = (value.decode() if isinstance(value, bytes) else str(value)).partition(":")
        if held != request_fingerprint:
            raise invalid(
                [
                    {
                        "loc": ("header", HEADER),
                        "msg": f"this {HEADER} was used with a different request; use a new key",
                        "type": "value_error",
                    }
                ]
            )
        if job_id:
            return Reservation(redis_key, request_fingerprint, job_id)
        if time.monotonic() > give_up:
            raise HTTPException(
                409,
                detail=f"a request with this {HEADER} is still being accepted; try again shortly",
                headers={"Retry-After": "1"},
            )
        await anyio.sleep(0.02)


async def release(store: JobStore, reservation: Reservation) -> None:
    """The first request was refused: free its key, so the same request can be tried again."""
    await store.redis.eval(_RELEASE, 1, reservation.redis_key, reservation.fingerprint)
