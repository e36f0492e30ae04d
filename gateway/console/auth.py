"""Console authentication: server-side sessions in Redis (idle and absolute lifetimes from the
settings), CSRF (double-submit cookie checked on every unsafe request, forms carry the token as a
hidden field so they work without JavaScript), login throttling per e-mail, and the guards pages
use."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.middleware.session.server_side import (
    ServerSideSessionBackend,
    ServerSideSessionConfig,
)
from litestar.stores.base import Store
from litestar.stores.redis import RedisStore
from litestar.types import Empty, Message, ScopeSession
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from tenants.console_users import get_console_user
from tenants.settings import Settings

if TYPE_CHECKING:
    from litestar import Litestar

SESSION_COOKIE = "maas_console_session"
CSRF_COOKIE = "maas_console_csrf"
MAX_FAILURES = 5
LOCKOUT_S = 15 * 60
_ROTATE = "console_rotate_session_id"
_ROTATED = "console_rotated_session_id"
_STORE = "console_session_store"


class LoginRequired(Exception):
    """No valid console session: the page answers with a redirect to the login form."""


class Forbidden(Exception):
    """Logged in, but the role may not see this page."""


@dataclass(frozen=True, slots=True)
class ConsoleIdentity:
    user_id: uuid.UUID
    email: str
    role: Literal["tenant_admin", "operator"]
    tenant_id: uuid.UUID | None

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


# --- sessions ----------------------------------------------------------------------------------


class ConsoleSessionBackend(ServerSideSessionBackend):
    def get_session_id(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        """A fresh id after login (``rotate_session_id``), so a planted cookie is worthless."""
        state = connection.scope.setdefault("state", {})
        if state.get(_ROTATE):
            if not state.get(_ROTATED):
                state[_ROTATED] = self.generate_session_id()
            rotated: str = state[_ROTATED]
            return rotated
        return super().get_session_id(connection)

    async def store_in_message(
        self,
        scope_session: ScopeSession,
        message: Message,
        connection: ASGIConnection[Any, Any, Any, Any],
    ) -> None:
        """An empty session is no session: an anonymous visitor gets no cookie and nothing is
        stored, and a browser whose session expired loses its cookie (so only the first page
        after expiry says so)."""
        if isinstance(scope_session, dict) and not scope_session:
            if not connection.cookies.get(self.config.key):
                return
            scope_session = Empty
        await super().store_in_message(scope_session, message, connection)


class ConsoleSessionConfig(ServerSideSessionConfig):
    """Sessions in Redis under the run's key prefix, on the per-process Redis client."""

    _backend_class = ConsoleSessionBackend

    def get_store_from_app(self, app: Litestar) -> Store:
        store: Store | None = app.state.get(_STORE)
        if store is None:
            services = app.state.services
            store = RedisStore(
                services.redis,
                namespace=f"{services.settings.redis_prefix}console-sessions",
                handle_client_shutdown=False,
            )
            app.state[_STORE] = store
        return store


def session_config(settings: Settings) -> ConsoleSessionConfig:
    """Every response re-stores the session for ``console_session_idle_s`` (Litestar sets the
    store expiry and the cookie's max-age on each write), so the lifetime is an idle timeout;
    ``identity_of`` adds the absolute cap counted from login."""
    return ConsoleSessionConfig(
        key=SESSION_COOKIE,
        max_age=settings.console_session_idle_s,
        path="/console",
        httponly=True,
        samesite="lax",
        scopes={"http"},  # type: ignore[arg-type]
    )


def csrf_config(secret: str) -> CSRFConfig:
    return CSRFConfig(
        secret=secret,
        cookie_name=CSRF_COOKIE,
        cookie_path="/console",
        cookie_httponly=True,
        cookie_samesite="strict",
        header_name="x-csrftoken",
    )


async def start_session(
    connection: ASGIConnection[Any, Any, Any, Any], identity: ConsoleIdentity
) -> None:
    """Log in: drop whatever session the browser had and issue a new id for the new one."""
    old = connection.cookies.get(SESSION_COOKIE)
    if old:
        await session_store(connection.app).delete(old)
    connection.scope.setdefault("state", {})[_ROTATE] = True
    connection.set_session(
        {"uid": str(identity.user_id), "email": identity.email, "login_at": time.time()}
    )


def end_session(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    connection.clear_session()


def session_store(app: Litestar) -> Store:
    return session_config(app.state.services.settings).get_store_from_app(app)


async def identity_of(
    connection: ASGIConnection[Any, Any, Any, Any], session: AsyncSession
) -> ConsoleIdentity:
    """The logged-in console user, re-read from the database on every request (a deleted user
    or a changed role takes effect at once); ``LoginRequired`` otherwise, also once the session
    is older than ``console_session_max_s`` however busy it was."""
    data = connection.scope.get("session")
    if not isinstance(data, dict) or not data:
        raise LoginRequired
    login_at = data.get("login_at")
    max_s: int = connection.app.state.services.settings.console_session_max_s
    if not isinstance(login_at, int | float) or time.time() - login_at >= max_s:
        connection.clear_session()
        raise LoginRequired
    raw = data.get("uid")
    try:
        user_id = uuid.UUID(raw) if isinstance(raw, str) else None
    except ValueError:
        user_id = None
    if user_id is None:
        raise LoginRequired
    user = await get_console_user(session, user_id)
    if user is None:
        connection.clear_session()
        raise LoginRequired
    role: Literal["tenant_admin", "operator"] = (
        "operator" if user.role == "operator" else "tenant_admin"
    )
    return ConsoleIdentity(user.id, user.email, role, user.tenant_id)


# --- login throttling --------------------------------------------------------------------------


class LoginThrottle:
    """``MAX_FAILURES`` failed logins for one e-mail lock it for ``LOCKOUT_S`` seconds (counted
    in Redis, so every gateway process shares it; the window restarts with each failure)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, email: str) -> str:
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
        return f"{self._prefix}console:login-failures:{digest}"

    async def locked_for(self, email: str) -> int:
        """Seconds the e-mail stays locked; 0 when it may try."""
        key = self._key(email)
        raw = await self._redis.get(key)
        if raw is None or int(raw) < MAX_FAILURES:
            return 0
        return max(1, int(await self._redis.ttl(key)))

    async def failed(self, email: str) -> None:
        key = self._key(email)
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, LOCKOUT_S)
        await pipe.execute()

    async def succeeded(self, email: str) -> None:
        await self._redis.delete(self._key(email))
