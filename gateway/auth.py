"""Authentication: ``Authorization: Bearer mk_live_…`` → ``Principal``.

Resolved principals are cached in-process for a few seconds, keyed by the key's prefix and
guarded by its keyed hash (so a cached prefix never admits a wrong secret). A revocation
published on Redis drops the entry in every process at once.

Postgres unreachable: a cached principal past its TTL is still served, up to
``max_stale_s`` old (``max_stale_unlistened_s`` while the revocation listener is cut off from
Redis too, as a revocation would go unheard); past that, or for a key never seen, 503
``auth_unavailable`` (the key may well be valid: never a 401).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway import errors
from tenants import services
from tenants.keys import hash_key, parse_prefix
from tenants.revocations import revocation_channel
from tenants.services import Principal

log = logging.getLogger(__name__)

# What "Postgres is unreachable" looks like from here (refused, reset, pool or query timeout).
_UNREACHABLE = (DBAPIError, PoolTimeout, OSError, TimeoutError)
_DB_RETRY_S = 1.0  # after a failed lookup, serve stale entries this long before trying again


@dataclass(slots=True)
class _Entry:
    key_hash: str
    principal: Principal
    fetched_at: float


class Authenticator:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        server_secret: str,
        *,
        ttl_s: float,
        max_stale_s: float = 0.0,
        max_stale_unlistened_s: float = 0.0,
        listening: Callable[[], bool] = lambda: True,
        db_timeout_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._secret = server_secret
        self._ttl = ttl_s
        self._max_stale = max_stale_s
        self._max_stale_unlistened = max_stale_unlistened_s
        self._listening = listening
        self._db_timeout = db_timeout_s
        self._db_down_until = 0.0
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def forget(self, key_prefix: str) -> None:
        self._cache.pop(key_prefix, None)

    def forget_all(self) -> None:
        self._cache.clear()

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise errors.Unauthenticated("missing Authorization: Bearer <API key> header")
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise errors.Unauthenticated("the Authorization header must be 'Bearer <API key>'")
        presented = presented.strip()
        prefix = parse_prefix(presented)
        if prefix is None:
            raise errors.InvalidApiKey("malformed API key")
        presented_hash = hash_key(self._secret, presented)
        entry = self._cache.get(prefix)
        now = self._clock()
        if entry is None or now - entry.fetched_at > self._ttl:
            lock = self._locks.setdefault(prefix, asyncio.Lock())
            async with lock:  # one database lookup per prefix, however many requests wait
                entry = self._cache.get(prefix)
                if entry is None or self._clock() - entry.fetched_at > self._ttl:
                    entry = await self._refresh(presented, prefix, entry)
            self._locks.pop(prefix, None)
        if not hmac.compare_digest(entry.key_hash, presented_hash):
            raise errors.InvalidApiKey("invalid API key")
        expires = entry.principal.expires_at
        if expires is not None and expires <= datetime.now(UTC):
            self.forget(prefix)
            raise errors.ExpiredApiKey("this API key has expired")
        return entry.principal

    async def _refresh(self, presented: str, prefix: str, stale: _Entry | None) -> _Entry:
        """A fresh lookup, or the stale entry (within bounds) when Postgres cannot answer."""
        if self._clock() >= self._db_down_until:
            try:
                async with asyncio.timeout(self._db_timeout):
                    return await self._load(presented, prefix)
            except _UNREACHABLE as exc:
                self._db_down_until = self._clock() + _DB_RETRY_S
                log.warning("API key lookup failed, Postgres unreachable: %s", exc)
        limit = self._max_stale if self._listening() else self._max_stale_unlistened
        if stale is not None and self._clock() - stale.fetched_at <= limit:
            return stale
        raise errors.AuthUnavailable("API keys cannot be checked right now; retry shortly")

    async def _load(self, presented: str, prefix: str) -> _Entry:
        async with self._sessionmaker() as session:
            principal = await services.authenticate(session, self._secret, presented)
            await session.commit()  # last_used_at
        entry = _Entry(hash_key(self._secret, presented), principal, self._clock())
        self._cache[prefix] = entry
        return entry


async def listen_for_revocations(
    redis: Redis, redis_prefix: str, authenticator: Authenticator, ready: asyncio.Event
) -> None:
    """Drop revoked keys from this process's cache; runs for the life of the process."""
    channel = revocation_channel(redis_prefix)
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            # Anything revoked while we were not listening may still be cached.
            authenticator.forget_all()
            ready.set()
            async for message in pubsub.listen():
                data = message.get("data")
                if isinstance(data, bytes):
                    authenticator.forget(data.decode())
                elif isinstance(data, str):
                    authenticator.forget(data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: retry; the cache TTL bounds staleness meanwhile
            log.warning("revocation listener lost Redis (%s); retrying", exc)
            ready.clear()
            await asyncio.sleep(0.5)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
