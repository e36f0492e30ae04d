"""``maas telemetry sampling``: change the trace sampling policy of every gateway at run time."""

from __future__ import annotations

import json
from typing import Any

import typer
from redis.asyncio import Redis

from gateway.telemetry.runtime import parse_overrides, sampling_key
from tenants.cli_support import JsonOption, console, fail, run
from tenants.settings import get_settings

telemetry_app = typer.Typer(help="Tracing and metrics.", no_args_is_help=True)


@telemetry_app.command("sampling")
def sampling(
    budget: float | None = typer.Option(None, "--budget", help="Traces/s per (route, tenant)."),
    ceiling: float | None = typer.Option(None, "--ceiling", help="Traces/s in all."),
    slow: float | None = typer.Option(None, "--slow-threshold", help="Always keep slower (s)."),
    reset: bool = typer.Option(False, "--reset", help="Back to the configured policy."),
    as_json: bool = JsonOption,
) -> None:
    """Show or change the overrides; gateways apply them within a few seconds."""
    settings = get_settings()
    changes = {
        k: v
        for k, v in (
            ("budget_per_key", budget),
            ("global_ceiling", ceiling),
            ("slow_threshold_s", slow),
        )
        if v is not None
    }
    if any(v <= 0 for v in changes.values()):
        raise fail("sampling values must be positive", "invalid_input", as_json)

    async def go() -> dict[str, Any]:
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2)
        key = sampling_key(settings.redis_prefix)
        try:
            if reset:
                await redis.delete(key)
                return {}
            current = parse_overrides(await redis.get(key))
            if changes:
                current.update(changes)
                await redis.set(key, json.dumps(current))
            return current
        finally:
            await redis.aclose()

    out = run(go, as_json)
    if as_json:
        print(json.dumps({"overrides": out}))
    else:
        console.print(f"trace sampling overrides: {out or 'none (configured policy)'}")
