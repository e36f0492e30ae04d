"""Sampling settings that change at run time: operators write them to Redis (``maas telemetry
sampling``) and every gateway process applies them within a few seconds."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

from redis.asyncio import Redis

from gateway.telemetry.sampler import DynamicSampler, SamplerConfig

log = logging.getLogger(__name__)

TUNABLE = ("budget_per_key", "global_ceiling", "slow_threshold_s")


def sampling_key(redis_prefix: str) -> str:
    return f"{redis_prefix}trace-sampling"


def parse_overrides(raw: str | bytes | None) -> dict[str, float]:
    if not raw:
        return {}
    data: Any = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("sampling overrides must be a JSON object")
    out: dict[str, float] = {}
    for name in TUNABLE:
        if name in data:
            value = float(data[name])
            if not value > 0:
                raise ValueError(f"{name} must be positive")
            out[name] = value
    return out


async def watch_sampling_overrides(
    redis: Redis,
    redis_prefix: str,
    sampler: DynamicSampler,
    base: SamplerConfig,
    *,
    interval_s: float = 2.0,
) -> None:
    """Poll the overrides and apply changes (deleting them restores the configured policy)."""
    applied: dict[str, float] | None = None
    while True:
        try:
            overrides = parse_overrides(await redis.get(sampling_key(redis_prefix)))
            if overrides != applied:
                sampler.configure(
                    dataclasses.replace(
                        base,
                        budget_per_key=overrides.get("budget_per_key", base.budget_per_key),
                        global_ceiling=overrides.get("global_ceiling", base.global_ceiling),
                        slow_threshold_s=overrides.get("slow_threshold_s", base.slow_threshold_s),
                    )
                )
                applied = overrides
                log.info("trace sampling policy now %s", overrides or "as configured")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away or a bad value: keep the current policy
            log.warning("could not read trace sampling overrides: %s", exc)
        await asyncio.sleep(interval_s)
