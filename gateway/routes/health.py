"""Liveness (the process answers) and readiness (Triton, Redis and Postgres reachable)."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from sqlalchemy import text

from gateway import errors
from gateway.app import services_of
from gateway.openapi import Live, Ready, error_responses, ok


@get("/v2/health/live", summary="The gateway process is alive", responses=ok(Live))
async def live() -> dict[str, bool]:
    return {"live": True}


@get(
    "/v2/health/ready",
    summary="The gateway can serve: Triton, Redis and Postgres answer",
    responses={**ok(Ready), **error_responses(503)},
)
async def ready(request: Request[Any, Any, Any]) -> dict[str, bool]:
    svc = services_of(request)
    if not await svc.triton.server_ready():
        raise errors.BackendUnavailable("the inference backend is not ready")
    try:
        await svc.redis.ping()
    except Exception as exc:
        raise errors.ServiceUnavailable("usage store (Redis) unreachable") from exc
    try:
        async with svc.sessionmaker() as session:
            await session.execute(text("select 1"))
    except Exception as exc:
        raise errors.ServiceUnavailable("database unreachable") from exc
    return {"ready": True}


handlers = [live, ready]
