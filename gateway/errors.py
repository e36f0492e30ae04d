"""Every failure a client can see, with its HTTP status and stable ``code``, in one place."""

from __future__ import annotations

from tenants.errors import (
    DomainError,
    ExpiredApiKey,
    InvalidApiKey,
    RevokedApiKey,
    Unauthenticated,
)

__all__ = ["ExpiredApiKey", "InvalidApiKey", "RevokedApiKey", "Unauthenticated"]


GatewayError = DomainError
"""Base of all errors rendered as ``{"error": message, "code": code}``."""


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class InvalidJson(BadRequest):
    code = "invalid_json"


class InvalidInferenceRequest(BadRequest):
    """The body parsed but does not describe a valid KServe v2 inference request."""

    code = "invalid_inference_request"


class InvalidTensor(BadRequest):
    """Shape, datatype or data of one tensor is wrong (caught before Triton sees it)."""

    code = "invalid_tensor"


class InvalidQuery(BadRequest):
    code = "invalid_query"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


class HeadersTooLarge(GatewayError):
    status = 431
    code = "headers_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(GatewayError):
    status = 429
    code = "rate_limited"


class RateLimited(TooManyRequests):
    """A request-rate limit (tenant or key, per second or per minute) refused the request."""

    code = "rate_limited"


class ConcurrencyLimited(TooManyRequests):
    """The tenant already has as many requests in flight as its plan allows."""

    code = "concurrency_limited"


class QuotaExceeded(TooManyRequests):
    """The tenant's monthly quota (requests or GPU-hours) is used up until the next month."""

    code = "quota_exceeded"


class BackendRejected(BadRequest):
    """Triton refused the request as invalid (gRPC INVALID_ARGUMENT)."""

    code = "backend_invalid_argument"


class BackendNotFound(NotFound):
    code = "model_not_found"


class BackendOverloaded(TooManyRequests):
    code = "backend_overloaded"


class BackendError(GatewayError):
    """Any platform-side failure: counted against SLA availability, never billed."""

    status = 502
    code = "backend_error"


class BackendUnavailable(BackendError):
    status = 503
    code = "backend_unavailable"


class BackendTimeout(BackendError):
    status = 504
    code = "backend_timeout"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "service_unavailable"


class MeteringUnavailable(ServiceUnavailable):
    """Neither Redis nor the local meter buffer can take the usage: never serve unmetered."""

    code = "metering_unavailable"


class AuthUnavailable(ServiceUnavailable):
    """The key cannot be checked (Postgres away) and no fresh-enough cached answer exists."""

    code = "auth_unavailable"


class CircuitOpen(BackendUnavailable):
    """The model's circuit breaker is open: failing fast instead of waiting on Triton."""


class AdmissionUnavailable(ServiceUnavailable):
    """Redis has been away longer than admission may run on local limits alone."""

    code = "admission_unavailable"
