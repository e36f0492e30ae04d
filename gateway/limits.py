"""Request header limits. The HTTP server (uvicorn with httptools) accepts headers of any size,
so an oversized header block is refused here, before authentication reads any of it."""

from __future__ import annotations

from collections.abc import Iterable

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.errors import HeadersTooLarge


def check_header_block(headers: Iterable[tuple[bytes, bytes]], max_header_bytes: int) -> None:
    """Raise ``HeadersTooLarge`` when all names and values together exceed the limit."""
    total = 0
    for name, value in headers:
        total += len(name) + len(value)
    if total > max_header_bytes:
        raise HeadersTooLarge(
            f"the request headers are {total} bytes, more than the limit of {max_header_bytes}"
        )


class HeaderLimitMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, max_header_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        check_header_block(scope["headers"], self.max_header_bytes)
        await next_app(scope, receive, send)
