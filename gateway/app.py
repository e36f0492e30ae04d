"""Litestar application factory and the per-process services it wires together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, Response, get
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.types import Message, Scope
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from billing.counters import last_pass_key
from gateway.admission import Admission
from gateway.auth import Authenticator, listen_for_revocations
from gateway.breaker import Breakers
from gateway.errors import GatewayError
from gateway.inference import InferencePath
from gateway.limits import HeaderLimitMiddleware
from gateway.meter_buffer import MeterBuffer
from gateway.metering import Meter
from gateway.openapi import openapi_config
from gateway.redis_pipe import PipelinedRedis, supports
from gateway.telemetry.asgi import TelemetryMiddleware
from gateway.telemetry.logging import configure_logging
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.runtime import watch_sampling_overrides
from gateway.telemetry.sampler import SamplerConfig
from gateway.telemetry.tracing import Telemetry, setup_tracing
from gateway.triton import TritonClient
from tenants.db import make_engine, make_sessionmaker
from tenants.settings import Settings, get_settings

if TYPE_CHECKING:
    from gateway.fastpath import InferFastPath

log = logging.getLogger("gateway")


@dataclass
class Services:
    """Everything a gateway process holds for its lifetime (one of each per process)."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    triton: TritonClient
    authenticator: Authenticator
    meter: Meter
    admission: Admission
    inference: InferencePath
    revocations_ready: asyncio.Event
    telemetry: Telemetry
    metrics: GatewayMetrics
    meter_redis: Redis
    meter_buffer: MeterBuffer
    hot_redis: PipelinedRedis | Redis  # admission and metering (may be ``meter_redis`` itself)

    @classmethod
    def build(cls, settings: Settings, telemetry: Telemetry, metrics: GatewayMetrics) -> Services:
        engine = make_engine(settings.database_url)
        sessionmaker = make_sessionmaker(engine)
        redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        triton = TritonClient(
            settings.triton_url,
            timeout_s=settings.triton_timeout_s,
            access_token=settings.triton_access_token,
        )
        revocations_ready = asyncio.Event()
        authenticator = Authenticator(
            sessionmaker,
            settings.secret_key,
            ttl_s=settings.principal_cache_ttl_s,
            max_stale_s=settings.principal_max_stale_s,
            max_stale_unlistened_s=settings.principal_max_stale_unlistened_s,
            listening=revocations_ready.is_set,
        )
        # Metering never retries: a retried script whose first attempt did run would count
        # twice. A failed call goes to the durable buffer instead (gateway.meter_buffer).
        meter_redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.meter_redis_timeout_s,
            socket_connect_timeout=settings.meter_redis_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        # The hot path's two calls share one auto-pipelined connection (gateway.redis_pipe),
        # with the same fail-fast timeout and no retries; redis-py serves URLs it cannot take.
        hot_redis: PipelinedRedis | Redis = (
            PipelinedRedis(settings.redis_url, timeout_s=settings.meter_redis_timeout_s)
            if supports(settings.redis_url)
            else meter_redis
        )
        meter = Meter(hot_redis, settings.redis_prefix)
        meter_buffer = MeterBuffer(
            settings.meter_buffer_dir,
            settings.redis_prefix,
            max_entries=settings.meter_buffer_max_entries,
            dedupe_ttl_s=settings.meter_replay_dedupe_ttl_s,
        )
        # Admission fails as fast as metering when Redis is away, then degrades (see admission).
        admission = Admission(
            hot_redis,
            settings.redis_prefix,
            lease_s=settings.triton_timeout_s + settings.admission_lease_margin_s,
            degraded_max_s=settings.admission_degraded_max_s,
        )
        inference = InferencePath(
            triton,
            meter,
            admission,
            max_tensor_elements=settings.max_tensor_elements,
            max_json_depth=settings.max_json_depth,
            telemetry=telemetry,
            metrics=metrics,
            buffer=meter_buffer,
            breakers=Breakers(
                threshold=settings.breaker_failure_threshold,
                cooldown_s=settings.breaker_cooldown_s,
            ),
        )
        return cls(
            settings,
            engine,
            sessionmaker,
            redis,
            triton,
            authenticator,
            meter,
            admission,
            inference,
            revocations_ready,
            telemetry,
            metrics,
            meter_redis,
            meter_buffer,
            hot_redis,
        )

    async def close(self) -> None:
        # In-flight requests have finished (uvicorn drains before the lifespan ends): what the
        # buffer holds goes to Redis now, or stays on disk for the next gateway process.
        await self.meter_buffer.close(self.meter_redis)
        await self.triton.close()
        if self.hot_redis is not self.meter_redis:
            await self.hot_redis.aclose()
        await self.meter_redis.aclose()
        await self.redis.aclose()
        await self.engine.dispose()


def services_of(request: Request[Any, Any, Any]) -> Services:
    svc: Services = request.app.state.services
    return svc


# --- errors: one mapping from exceptions to {"error", "code"} --------------------------------

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response[object]:
    return Response(
        content={"error": message, "code": code},
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _domain_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[object]:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[object]:
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else "request failed"
    if status == 400 and exc.extra:
        message = f"{message}: {exc.extra}"
    return error_response(status, _HTTP_CODES.get(status, "http_error"), message, exc.headers)


def _unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[object]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error")


# --- request ids -------------------------------------------------------------------------------

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The caller's ``X-Request-Id`` if well-formed, else a new one; fixed once per request."""
    state = scope.setdefault("state", {})
    rid: str | None = state.get("request_id")
    if rid is None:
        rid = ""
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _SAFE_REQUEST_ID.fullmatch(candidate):
                    rid = candidate
                break
        rid = rid or uuid.uuid4().hex
        state["request_id"] = rid
    return rid


async def add_request_id(message: Message, scope: Scope) -> None:
    """Every response, including the router's own 404/405, carries ``X-Request-Id``."""
    if message["type"] == "http.response.start":
        header = (b"x-request-id", request_id_of(scope).encode())
        message["headers"] = [*message.get("headers", []), header]


async def _observe_rollup_lag(svc: Services, metrics: GatewayMetrics) -> None:
    """Seconds since the last complete rollup pass (-1 when none has run or Redis is away)."""
    try:
        raw = await svc.redis.get(last_pass_key(svc.settings.redis_prefix))
    except Exception:
        raw = None
    metrics.set_rollup_lag(time.time() - float(raw) if raw else -1.0)


# --- factory -----------------------------------------------------------------------------------


def create_app(settings: Settings | None = None, telemetry: Telemetry | None = None) -> Litestar:
    from gateway.console import console_router, template_config
    from gateway.routes import billing, health, inference, usage

    settings = settings or get_settings()
    configure_logging(json=settings.log_json, level=settings.log_level)
    telemetry = telemetry or setup_tracing(
        enabled=bool(settings.otlp_endpoint),
        otlp_endpoint=settings.otlp_endpoint,
        sampler=SamplerConfig(
            budget_per_key=settings.trace_budget_per_key,
            global_ceiling=settings.trace_global_ceiling,
            slow_threshold_s=settings.trace_slow_threshold_s,
            respect_parent_sampled=settings.trace_respect_parent_sampled,
        ),
    )
    metrics = GatewayMetrics()
    metrics.watch_sampler(telemetry.sampler, telemetry.processor)

    @get("/metrics", include_in_schema=False)
    async def metrics_route(request: Request[Any, Any, Any]) -> Response[bytes]:
        await _observe_rollup_lag(services_of(request), metrics)
        body, content_type = metrics.render()
        return Response(content=body, media_type=content_type)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = Services.build(settings, telemetry, metrics)
        app.state.services = services
        sampling_watch = asyncio.create_task(
            watch_sampling_overrides(
                services.redis, settings.redis_prefix, telemetry.sampler, telemetry.sampler.config
            )
        )
        listener = asyncio.create_task(
            listen_for_revocations(
                services.redis,
                settings.redis_prefix,
                services.authenticator,
                services.revocations_ready,
            )
        )
        replays = asyncio.create_task(
            services.meter_buffer.run_replays(
                services.meter_redis, settings.meter_replay_interval_s
            )
        )
        try:
            yield
        finally:
            for task in (listener, sampling_watch, replays):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await services.close()
            await asyncio.to_thread(telemetry.shutdown)

    app = Litestar(
        route_handlers=[
            *inference.handlers,
            *health.handlers,
            *usage.handlers,
            *billing.handlers,
            metrics_route,
            console_router(settings),
        ],
        middleware=[
            DefineMiddleware(
                TelemetryMiddleware,
                telemetry=telemetry,
                metrics=metrics,
                request_id=request_id_of,
                untraced_routes=frozenset({"/metrics", "/v2/health/live", "/v2/health/ready"}),
            ),
            HeaderLimitMiddleware(settings.max_header_bytes),
        ],
        lifespan=[lifespan],
        before_send=[add_request_id],
        exception_handlers={
            GatewayError: _domain_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        request_max_body_size=settings.max_body_bytes,
        template_config=template_config(),
        openapi_config=openapi_config(),
        logging_config=None,
    )
    # What ``gateway.fastpath`` needs to serve inference calls in front of the router.
    app.state.telemetry = telemetry
    app.state.metrics = metrics
    app.state.max_body_bytes = settings.max_body_bytes
    app.state.max_header_bytes = settings.max_header_bytes
    return app


def create_serving_app() -> InferFastPath:
    """What ``maas serve`` runs: the Litestar app behind the inference fast path."""
    from gateway.fastpath import InferFastPath

    return InferFastPath(create_app())
