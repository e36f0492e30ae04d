"""Stripe-shaped API errors.

``saved`` says whether the idempotency layer may store the response under the
request's ``Idempotency-Key``.  Stripe documents that results are saved only once an
endpoint has *begun executing*; requests rejected before that (authentication, most
parameter validation, idempotency conflicts) are not saved and are safe to retry with
the same key.  Errors produced while executing (say, finalizing an invoice that is no
longer a draft) are saved and replayed like any other result.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        saved: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.param = param
        self.code = code
        self.saved = saved

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        if self.code is not None:
            error["code"] = self.code
        return {"error": error}

    # -- constructors for the cases this server produces ---------------------------

    @classmethod
    def invalid(
        cls,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        saved: bool = True,
    ) -> ApiError:
        return cls(400, "invalid_request_error", message, param=param, code=code, saved=saved)

    @classmethod
    def bad_param(cls, message: str, param: str, code: str = "parameter_invalid") -> ApiError:
        """A parameter failed validation: rejected before execution, never saved."""
        return cls.invalid(message, param=param, code=code, saved=False)

    @classmethod
    def missing_param(cls, param: str) -> ApiError:
        return cls.invalid(
            f"Missing required param: {param}.",
            param=param,
            code="parameter_missing",
            saved=False,
        )

    @classmethod
    def unknown_param(cls, param: str) -> ApiError:
        return cls.invalid(
            f"Received unknown parameter: {param}",
            param=param,
            code="parameter_unknown",
            saved=False,
        )

    @classmethod
    def no_such(cls, kind: str, object_id: str, *, param: str | None = None) -> ApiError:
        """A referenced object does not exist: 404 in the URL, 400 in a parameter."""
        status = 404 if param is None else 400
        return cls(
            status,
            "invalid_request_error",
            f"No such {kind}: '{object_id}'",
            param=param or "id",
            code="resource_missing",
        )

    @classmethod
    def idempotency(cls, message: str) -> ApiError:
        return cls(400, "idempotency_error", message, saved=False)

    @classmethod
    def server(cls, message: str) -> ApiError:
        return cls(500, "api_error", message)
