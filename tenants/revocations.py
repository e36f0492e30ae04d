"""Key revocations travel over Redis pub/sub so every gateway process drops its cached entry."""

from __future__ import annotations

from redis.asyncio import Redis


def revocation_channel(redis_prefix: str) -> str:
    return f"{redis_prefix}key-revocations"


async def publish_revocation(redis: Redis, redis_prefix: str, key_prefix: str) -> int:
    """Returns the number of gateway processes that received it."""
    return int(await redis.publish(revocation_channel(redis_prefix), key_prefix))
