"""Optional API keys: callers are identified by a hash of their key, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from starlette.datastructures import Headers

from shared.settings import Settings

# The owner of every job when keys are off.
ANONYMOUS = ""


def owner_of(key: str) -> str:
    """A short, stable, non-secret name for a key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def presented_key(headers: Headers) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key`, if either is there."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


class ApiKeys:
    """The configured keys; `owner()` tells who is calling, or None for a missing or wrong key."""

    def __init__(self, settings: Settings) -> None:
        self._keys = [
            (k.get_secret_value().encode(), owner_of(k.get_secret_value())) for k in settings.api_keys
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def owner(self, presented: str | None) -> str | None:
        if not self.enabled:
            return ANONYMOUS
        if presented is None:
            return None
        candidate = presented.encode()
        found = None
        # Compare against every key, without stopping early, so timing tells nothing about which matched.
        for key, owner in self._keys:
            if hmac.compare_digest(candidate, key):
                found = owner
        return found
