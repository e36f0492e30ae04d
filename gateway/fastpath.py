"""The served ASGI app: inference calls go straight to ``InferencePath``; all else to Litestar.

``POST /v2/models/{model}[/versions/{version}]/infer`` is the hot path and is billed per request,
so it skips the framework's router, dependency injection and response classes (≈ 100 µs of CPU
per request, measured in ``bench/``). It keeps everything a caller can observe: the same status
codes and JSON error bodies (one mapping, ``gateway.errors``), the header (431) and body (413)
size limits,
``X-Request-Id``, the request metrics and the root span (``TelemetryMiddleware``). Litestar
still owns the same routes (``gateway.routes.inference``) for the OpenAPI schema and for apps
built without this front (tests' in-process clients); both call ``respond_infer``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from litestar import Litestar

from gateway import errors
from gateway.app import Services, request_id_of
from gateway.inference import InferResult
from gateway.limits import check_header_block
from gateway.telemetry.asgi import TelemetryMiddleware

log = logging.getLogger("gateway")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

INFER_ROUTE = "/v2/models/{model}/infer"
INFER_VERSION_ROUTE = "/v2/models/{model}/versions/{version}/infer"
HEADER_LENGTH = "inference-header-content-length"
_MAX_LENGTH_DIGITS = 18


def header_length_of(raw: str | None) -> int | None:
    """The binary extension's ``Inference-Header-Content-Length``, validated."""
    if raw is None:
        return None
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if not raw.isascii() or not raw.isdigit():
        raise errors.InvalidInferenceRequest(
            "Inference-Header-Content-Length must be a non-negative integer"
        )
    if len(raw) > _MAX_LENGTH_DIGITS:  # no body is that large (and int() refuses huge strings)
        raise errors.InvalidInferenceRequest(
            "Inference-Header-Content-Length is larger than the request body"
        )
    return int(raw)


async def respond_infer(
    svc: Services,
    authorization: str | None,
    header_length: str | None,
    model: str,
    version: str,
    body: bytes,
) -> InferResult:
    """authenticate → (``InferencePath``: admit → proxy → meter); raises ``GatewayError``."""
    principal = await svc.authenticator.authenticate(authorization)
    length = header_length_of(header_length)
    return await svc.inference.infer(principal, model, version, body, length)


def match_infer_path(path: str) -> tuple[str, str, str] | None:
    """(route template, model, version) when ``path`` is an inference call, else None."""
    if not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return None
    parts = path.split("/")
    if len(parts) == 5 and parts[3]:
        return INFER_ROUTE, parts[3], ""
    if len(parts) == 7 and parts[3] and parts[4] == "versions" and parts[5]:
        return INFER_VERSION_ROUTE, parts[3], parts[5]
    return None


class _BodyTooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class InferFastPath:
    """ASGI app: inference requests handled here, everything else (and lifespan) by Litestar."""

    def __init__(self, app: Litestar) -> None:
        self.app = app
        telemetry = app.state.telemetry
        self.max_body = int(app.state.max_body_bytes)
        self.max_header_bytes = int(app.state.max_header_bytes)
        self._traced = TelemetryMiddleware(
            self._handle,
            telemetry=telemetry,
            metrics=app.state.metrics,
            request_id=request_id_of,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            matched = match_infer_path(scope["path"])
            if matched is not None:
                route, model, version = matched
                scope["path_template"] = route
                scope["path_params"] = {"model": model, "version": version}
                await self._traced(scope, receive, send)
                return
        await self.app(scope, receive, send)  # type: ignore[arg-type]

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        rid = request_id_of(scope)  # type: ignore[arg-type]
        params = scope["path_params"]
        try:
            check_header_block(scope["headers"], self.max_header_bytes)
            body = await self._read_body(headers, receive)
            result = await respond_infer(
                self.app.state.services,
                _text(headers.get(b"authorization")),
                _text(headers.get(HEADER_LENGTH.encode())),
                params["model"],
                params["version"],
                body,
            )
        except _Disconnected:
            return
        except _BodyTooLarge:
            exc = errors.PayloadTooLarge(f"request body exceeds {self.max_body} bytes")
            await _send_error(send, rid, exc)
            return
        except errors.GatewayError as exc:
            await _send_error(send, rid, exc)
            return
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            await _send(send, 500, rid, _error_body("internal error", "internal_error"))
            raise
        extra = _encode_headers(result.headers)
        if result.json_header_length is None:
            await _send(send, 200, rid, result.body, extra=extra)
        else:
            extra.append((HEADER_LENGTH.encode(), str(result.json_header_length).encode()))
            await _send(
                send, 200, rid, result.body, content_type=b"application/octet-stream", extra=extra
            )

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise _BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    raise _BodyTooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("latin-1")


def _error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": message, "code": code}).encode()


def _encode_headers(headers: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]


async def _send_error(send: Send, rid: str, exc: errors.GatewayError) -> None:
    extra = _encode_headers(exc.headers)
    await _send(send, exc.status, rid, _error_body(exc.message, exc.code), extra=extra)


async def _send(
    send: Send,
    status: int,
    rid: str,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", rid.encode()),
    ]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
