"""``TelemetryMiddleware``: one ASGI middleware that gives each HTTP request its root span (when
tracing is on), its request-id log context, and its request metrics.

In Litestar, app-level middleware runs after routing and outside the route's exception handler,
so it sees the route template (``scope["path_template"]``) and the final status of responses
built from exceptions. The router's own 404/405 never reach it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Container, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from gateway.telemetry.logging import request_id_var
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.tracing import (
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_STATUS,
    Telemetry,
    bind_root_span,
    extract_context_asgi,
    unbind_root_span,
)

__all__ = ["UNMATCHED_ROUTE", "TelemetryMiddleware"]

# Framework-neutral ASGI types: ``Any`` keeps the middleware assignable to Litestar's (TypedDict)
# ASGI app type and any other framework's.
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

UNMATCHED_ROUTE = "unmatched"
_CLIENT_CLOSED = 499  # no response was sent because the request was cancelled


class TelemetryMiddleware:
    """Wrap an ASGI app: ``DefineMiddleware(TelemetryMiddleware, telemetry=..., metrics=...,
    request_id=request_id_of)`` in Litestar.

    ``request_id(scope) -> str`` (optional) names the request for logs and the span;
    ``untraced_routes`` are route templates given no span (still counted in metrics), e.g.
    ``/metrics`` and health checks.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        telemetry: Telemetry,
        metrics: GatewayMetrics | None = None,
        request_id: Callable[[Any], str] | None = None,
        untraced_routes: Container[str] = frozenset(),
    ) -> None:
        self.app = app
        self.telemetry = telemetry
        self.metrics = metrics
        self.request_id = request_id
        self.untraced_routes = untraced_routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route: str = scope.get("path_template") or UNMATCHED_ROUTE
        rid = self.request_id(scope) if self.request_id is not None else None
        rid_token = request_id_var.set(rid)
        status = 0

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        span: trace.Span | None = None
        telemetry = self.telemetry
        if telemetry.enabled and route not in self.untraced_routes:
            parent = extract_context_asgi(scope.get("headers", ()))
            span = telemetry.tracer.start_span(
                f"{scope.get('method', 'HTTP')} {route}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={ATTR_ROUTE: route, "http.request.method": scope.get("method", "")},
            )
            ctx_token = otel_context.attach(trace.set_span_in_context(span, parent))
            root_token = bind_root_span(span)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note_status)
        except BaseException as exc:
            if status == 0:
                status = 500 if isinstance(exc, Exception) else _CLIENT_CLOSED
            if span is not None and isinstance(exc, Exception):
                span.record_exception(exc)
            raise
        finally:
            elapsed = time.perf_counter() - started
            model = scope.get("path_params", {}).get("model", "")
            if span is not None:
                span.set_attribute(ATTR_STATUS, status)
                if isinstance(model, str) and model:
                    span.set_attribute("maas.model", model)
                if rid is not None:
                    span.set_attribute(ATTR_REQUEST_ID, rid)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
                span.end()
                unbind_root_span(root_token)
                otel_context.detach(ctx_token)
            if self.metrics is not None:
                self.metrics.observe_request(
                    route, model if isinstance(model, str) else "", status, elapsed
                )
            request_id_var.reset(rid_token)
