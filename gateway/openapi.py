"""The OpenAPI description of the HTTP API: error bodies, the bearer key, response shapes and the
KServe v2 inference body (read raw by the handler, so Litestar cannot infer it).

Only documentation lives here; the handlers' behaviour does not depend on it. Schemathesis checks
that the running gateway matches it (``tests/integration/test_schemathesis.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec
from litestar.enums import ParamType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

__all__ = [
    "API_KEY",
    "ErrorBody",
    "InferOperation",
    "StripeWebhookOperation",
    "error_responses",
    "openapi_config",
]

API_KEY: Final[list[SecurityRequirement]] = [{"apiKey": []}]
"""``security=`` of every operation that needs ``Authorization: Bearer mk_live_…``."""


class ErrorBody(msgspec.Struct):
    """Every error: a human message and a stable snake_case code."""

    error: str
    code: str


_ERROR_TEXT: Final = {
    400: "Bad request (invalid_json, invalid_inference_request, invalid_tensor, invalid_query, "
    "backend_invalid_argument, bad_request)",
    401: "Missing or bad API key (unauthenticated, invalid_api_key, api_key_revoked, "
    "api_key_expired)",
    404: "Not found, or not visible to this tenant (model_not_found, not_found)",
    405: "Method not allowed",
    413: "Request body too large (payload_too_large)",
    431: "Request headers too large (headers_too_large)",
    429: "Rate limited (rate_limited, backend_overloaded)",
    502: "The inference backend failed (backend_error)",
    503: "A backend is unavailable (backend_unavailable, service_unavailable)",
    504: "The inference backend timed out (backend_timeout)",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` documenting the given error statuses (and 431, which any request may
    get) with the ``ErrorBody`` shape."""
    return {
        status: ResponseSpec(ErrorBody, description=_ERROR_TEXT[status], generate_examples=False)
        for status in sorted({*statuses, 431})
    }


def ok(data: Any, description: str = "OK") -> dict[int, ResponseSpec]:
    return {200: ResponseSpec(data, description=description, generate_examples=False)}


# --- response shapes (documentation of what the handlers return as plain dicts) ---------------


class Live(msgspec.Struct):
    live: bool


class Ready(msgspec.Struct):
    ready: bool


class ModelReady(msgspec.Struct):
    name: str
    ready: bool


class TensorMetadata(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(msgspec.Struct):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class UsageTotals(msgspec.Struct):
    requests: int
    gpu_seconds: float
    failures: int


class UsagePoint(msgspec.Struct):
    model: str
    bucket: str
    requests: int
    gpu_seconds: float
    failures: int


class UsageReport(msgspec.Struct):
    start: str
    end: str
    granularity: Literal["hour", "day"]
    totals: UsageTotals
    series: list[UsagePoint]


class InvoiceTenant(msgspec.Struct):
    id: str
    name: str


class InvoiceLine(msgspec.Struct):
    kind: str
    model: str | None
    quantity: int
    unit: str
    amount_cents: int
    description: str


class Invoice(msgspec.Struct):
    id: str
    tenant: InvoiceTenant
    period: str
    status: str
    currency: str
    subtotal_cents: int
    credit_cents: int
    total_cents: int
    stripe_invoice_id: str | None
    hosted_invoice_url: str | None
    availability_percent: str | None
    lines: list[InvoiceLine]


class InvoiceList(msgspec.Struct):
    invoices: list[Invoice]


class WebhookReceipt(msgspec.Struct):
    received: bool


# --- the KServe v2 inference body --------------------------------------------------------------

_DATATYPES: Final = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
_PARAM_VALUE: Final = Schema(
    one_of=[
        Schema(type=OpenAPIType.BOOLEAN),
        Schema(type=OpenAPIType.NUMBER),
        Schema(type=OpenAPIType.STRING),
    ]
)
_PARAMETERS: Final = Schema(type=OpenAPIType.OBJECT, additional_properties=_PARAM_VALUE)
_SHAPE: Final = Schema(
    type=OpenAPIType.ARRAY,
    items=Schema(type=OpenAPIType.INTEGER, minimum=0, maximum=2**63 - 1),
)


def _tensor(*, data_required: bool, description: str) -> Schema:
    properties: dict[str, Schema | Reference] = {
        "name": Schema(type=OpenAPIType.STRING),
        "shape": _SHAPE,
        "datatype": Schema(type=OpenAPIType.STRING, enum=_DATATYPES),
        "parameters": _PARAMETERS,
        "data": Schema(description="Tensor elements, flat or nested, row-major"),
    }
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["name", "shape", "datatype", *(["data"] if data_required else [])],
        properties=properties,
        additional_properties=False,
        description=description,
    )


INFER_REQUEST: Final = Schema(
    type=OpenAPIType.OBJECT,
    required=["inputs"],
    additional_properties=False,
    properties={
        "id": Schema(type=OpenAPIType.STRING),
        "parameters": _PARAMETERS,
        "inputs": Schema(
            type=OpenAPIType.ARRAY,
            min_items=1,
            items=_tensor(
                data_required=False,
                description="data, or parameters.binary_data_size with the binary extension",
            ),
        ),
        "outputs": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(
                type=OpenAPIType.OBJECT,
                required=["name"],
                properties={"name": Schema(type=OpenAPIType.STRING), "parameters": _PARAMETERS},
                additional_properties=False,
            ),
        ),
    },
    description="KServe v2 inference request (JSON; or JSON header + binary tensors with "
    "Inference-Header-Content-Length)",
)

INFER_RESPONSE: Final = Schema(
    type=OpenAPIType.OBJECT,
    required=["model_name", "outputs"],
    properties={
        "model_name": Schema(type=OpenAPIType.STRING),
        "model_version": Schema(type=OpenAPIType.STRING),
        "id": Schema(type=OpenAPIType.STRING),
        "parameters": _PARAMETERS,
        "outputs": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(
                type=OpenAPIType.OBJECT,
                required=["name", "datatype", "shape"],
                properties={
                    "name": Schema(type=OpenAPIType.STRING),
                    "datatype": Schema(type=OpenAPIType.STRING),
                    "shape": _SHAPE,
                    "parameters": _PARAMETERS,
                    "data": Schema(type=OpenAPIType.ARRAY),
                },
            ),
        ),
    },
)


@dataclass
class InferOperation(Operation):
    """The inference operation, with the raw body and both response media types documented."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={
                "application/json": OpenAPIMediaType(schema=INFER_REQUEST),
                "application/octet-stream": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                ),
            },
        )
        self.parameters = [
            *(self.parameters or []),
            Parameter(
                name="Inference-Header-Content-Length",
                param_in=ParamType.HEADER,
                required=False,
                schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
                description="Length of the JSON header when binary tensor data follows it",
            ),
        ]
        assert self.responses is not None
        self.responses["200"] = OpenAPIResponse(
            description="Inference result: JSON, or (binary outputs requested) a JSON header of "
            "Inference-Header-Content-Length bytes followed by the binary tensors",
            content={
                "application/json": OpenAPIMediaType(schema=INFER_RESPONSE),
                "application/octet-stream": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
                ),
            },
        )


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="MaaS gateway",
        version="0.1.0",
        path="/schema",
        components=Components(
            security_schemes={
                "apiKey": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="Authorization: Bearer mk_live_<prefix>_<secret>",
                )
            }
        ),
    )


@dataclass
class StripeWebhookOperation(Operation):
    """Stripe's event (JSON, read raw: the signature covers the exact bytes) and its signature."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={"application/json": OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT))},
        )
        self.parameters = [
            *(self.parameters or []),
            Parameter(
                name="Stripe-Signature",
                param_in=ParamType.HEADER,
                required=True,
                schema=Schema(type=OpenAPIType.STRING),
                description="t=<unix time>,v1=<HMAC-SHA-256 of the payload>",
            ),
        ]
