"""Console users: people who log in to the web console. A ``tenant_admin`` belongs to exactly one
tenant and sees only it; an ``operator`` runs the platform (all tenants, models). Passwords are
stored only as argon2id hashes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import CheckConstraint, DateTime, ForeignKey, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from tenants import errors
from tenants.models import AuditLog, Base, _now_column
from tenants.services import find_tenant

Role = Literal["tenant_admin", "operator"]
ROLES: tuple[Role, ...] = ("tenant_admin", "operator")
MIN_PASSWORD_LENGTH = 12

_hasher = PasswordHasher()
# Verified against when the e-mail is unknown, so timing does not reveal which accounts exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password-just-for-timing")


class ConsoleUser(Base):
    __tablename__ = "console_users"
    __table_args__ = (
        CheckConstraint("role IN ('tenant_admin', 'operator')", name="role"),
        CheckConstraint(
            "(role = 'operator' AND tenant_id IS NULL) "
            "OR (role = 'tenant_admin' AND tenant_id IS NOT NULL)",
            name="role_tenant",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = _now_column()
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DuplicateConsoleUser(errors.ConflictError):
    code = "console_user_exists"


def normalize_email(email: str) -> str:
    return email.strip().lower()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


async def create_console_user(
    session: AsyncSession,
    email: str,
    password: str,
    *,
    role: Role,
    tenant_ref: str | None = None,
    actor: str = "cli",
) -> ConsoleUser:
    email = normalize_email(email)
    if "@" not in email or len(email) > 320 or any(c.isspace() for c in email):
        raise errors.ValidationError("email must be an address")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise errors.ValidationError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if role not in ROLES:
        raise errors.ValidationError("role must be tenant_admin or operator")
    tenant_id: uuid.UUID | None = None
    if role == "tenant_admin":
        if not tenant_ref:
            raise errors.ValidationError("a tenant admin needs a tenant")
        tenant_id = (await find_tenant(session, tenant_ref)).id
    elif tenant_ref:
        raise errors.ValidationError("an operator belongs to no tenant")
    if await session.scalar(select(ConsoleUser.id).where(ConsoleUser.email == email)):
        raise DuplicateConsoleUser(f"a console user {email!r} already exists")
    user = ConsoleUser(
        id=uuid.uuid4(),
        email=email,
        password_hash=hash_password(password),
        role=role,
        tenant_id=tenant_id,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent create won the unique index
        raise DuplicateConsoleUser(f"a console user {email!r} already exists") from exc
    session.add(
        AuditLog(actor=actor, action="console_user.create", tenant_id=tenant_id, target=email)
    )
    await session.flush()
    return user


async def verify_login(session: AsyncSession, email: str, password: str) -> ConsoleUser | None:
    """The user whose e-mail and password match, else None (same work either way)."""
    user = await session.scalar(
        select(ConsoleUser).where(ConsoleUser.email == normalize_email(email))
    )
    stored = user.password_hash if user is not None else _DUMMY_HASH
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = datetime.now(UTC)
    await session.flush()
    return user


async def get_console_user(session: AsyncSession, user_id: uuid.UUID) -> ConsoleUser | None:
    return await session.get(ConsoleUser, user_id)
