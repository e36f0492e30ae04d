"""Key revocations travel over Redis pub/sub so every gateway process drops its cached entry."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from tenants import services
from tenants.models import ApiKey

log = logging.getLogger(__name__)


def revocation_channel(redis_prefix: str) -> str:
    return f"{redis_prefix}key-revocations"


async def publish_revocation(redis: Redis, redis_prefix: str, key_prefix: str) -> int:
    """Returns the number of gateway processes that received it."""
    return int(await redis.publish(revocation_channel(redis_prefix), key_prefix))


async def forget_everywhere(redis: Redis, redis_prefix: str, key_prefixes: list[str]) -> int | None:
    """Make every gateway process reload these keys (e.g. after their limits changed): the same
    message as a revocation drops the cached principal, and the next request reloads it. Returns
    the processes told, or ``None`` when Redis was unreachable (the cache TTL bounds it then)."""
    try:
        told = 0
        for key_prefix in key_prefixes:
            told = max(told, await publish_revocation(redis, redis_prefix, key_prefix))
    except Exception as exc:
        log.warning("could not tell gateways to reload %d key(s): %s", len(key_prefixes), exc)
        return None
    return told


@dataclass(frozen=True, slots=True)
class Revoked:
    key: ApiKey
    # Gateway processes told at once; None when Redis was unreachable (their cache TTL bounds it).
    gateways_notified: int | None


async def revoke_everywhere(
    session: AsyncSession,
    redis: Redis,
    redis_prefix: str,
    ref: str,
    *,
    tenant_id: uuid.UUID | None = None,
    actor: str = "cli",
) -> Revoked:
    """Revoke the key, commit, then tell every gateway process (after the commit, so a process
    that reloads the key on the message already sees it revoked)."""
    key = await services.revoke_api_key(session, ref, tenant_id=tenant_id, actor=actor)
    await session.commit()
    try:
        notified: int | None = await publish_revocation(redis, redis_prefix, key.prefix)
    except Exception as exc:
        log.warning("key %s revoked but gateways not notified: %s", key.prefix, exc)
        notified = None
    return Revoked(key, notified)
