"""Domain failures of the tenants layer. Each carries a stable ``code`` and the HTTP status the
gateway answers with; the CLI prints the message and exits non-zero."""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class NotFoundError(DomainError):
    status = 404
    code = "not_found"


class ConflictError(DomainError):
    status = 409
    code = "conflict"


class ValidationError(DomainError):
    status = 400
    code = "invalid_input"


class UnknownPlan(NotFoundError):
    code = "plan_not_found"


class UnknownTenant(NotFoundError):
    code = "tenant_not_found"


class UnknownApiKey(NotFoundError):
    code = "api_key_not_found"


class UnknownModel(NotFoundError):
    code = "model_not_found"


class DuplicateTenant(ConflictError):
    code = "tenant_exists"


class Unauthenticated(DomainError):
    status = 401
    code = "unauthenticated"


class InvalidApiKey(Unauthenticated):
    code = "invalid_api_key"


class RevokedApiKey(Unauthenticated):
    code = "api_key_revoked"


class ExpiredApiKey(Unauthenticated):
    code = "api_key_expired"
