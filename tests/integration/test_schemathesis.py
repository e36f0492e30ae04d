"""Schemathesis against a real gateway: every operation of ``/schema/openapi.json``, with valid
(positive) and schema-violating (negative) inputs generated from the schema, authenticated with a
real tenant key. No answer may be a 5xx, and every answer (status code, content type, body) must
be one the schema documents.

Bounded and deterministic: ``MAX_EXAMPLES`` examples per operation and mode, derandomized.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Gateway, TenantKey

MAX_EXAMPLES = 25
# Models Triton really serves in the tests; most generated cases are steered to them.
SERVED_MODELS = ["double", "all_types"]

OPERATIONS = [
    ("POST", "/v2/models/{model}/infer"),
    ("POST", "/v2/models/{model}/versions/{version}/infer"),
    ("GET", "/v2/models/{model}"),
    ("GET", "/v2/models/{model}/versions/{version}"),
    ("GET", "/v2/models/{model}/ready"),
    ("GET", "/v2/models/{model}/versions/{version}/ready"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/invoices"),
    ("GET", "/v1/invoices/{invoice_id}"),
    ("POST", "/webhooks/stripe"),  # unsigned: always the documented 400
]
# No parameters and no body: nothing to generate a schema-violating request from.
WITHOUT_INPUTS = [("GET", "/v2/health/live"), ("GET", "/v2/health/ready")]


@pytest.fixture(scope="module")
def fuzz_tenant(make_tenant: Callable[..., TenantKey]) -> TenantKey:
    return make_tenant()


@pytest.fixture(scope="module")
def api_schema(gateway: Gateway) -> Any:
    return schemathesis.openapi.from_url(f"{gateway.url}/schema/openapi.json", timeout=30)


def _aim_at_served_models(case: Any) -> None:
    """Random model names are never published: steer two thirds of the cases to models Triton
    serves, so that generated bodies also go the whole way through parsing to Triton."""
    path = case.path_parameters
    if path and isinstance(path.get("model"), str):
        choice = len(path["model"]) % (len(SERVED_MODELS) + 1)
        if choice < len(SERVED_MODELS):
            path["model"] = SERVED_MODELS[choice]


def fuzz_operation(
    api_schema: Any,
    method: str,
    path: str,
    mode: GenerationMode,
    base_url: str,
    headers: dict[str, str],
    max_examples: int = MAX_EXAMPLES,
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        _aim_at_served_models(case)
        case.call_and_validate(
            base_url=base_url,
            headers=headers,
            timeout=30,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )

    run()


def test_the_schema_lists_exactly_the_operations_fuzzed_here(gateway: Gateway) -> None:
    schema = httpx.get(f"{gateway.url}/schema/openapi.json").json()
    listed = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    assert listed == set(OPERATIONS + WITHOUT_INPUTS)
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [(m, p, mode) for m, p in OPERATIONS for mode in GenerationMode]
    + [(m, p, GenerationMode.POSITIVE) for m, p in WITHOUT_INPUTS],
)
def test_gateway_conforms_to_its_openapi_schema(
    api_schema: Any,
    gateway: Gateway,
    fuzz_tenant: TenantKey,
    published_models: list[str],
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    fuzz_operation(api_schema, method, path, mode, gateway.url, fuzz_tenant.headers)


VALID_BODIES = [
    pytest.param(
        {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
        id="json",
    ),
    pytest.param(
        {
            "inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
            "parameters": {"binary_data_output": True},
        },
        id="binary-output",
    ),
]


@pytest.mark.parametrize("body", VALID_BODIES)
def test_a_served_inference_conforms_to_the_schema(
    api_schema: Any, gateway: Gateway, fuzz_tenant: TenantKey, body: dict[str, Any]
) -> None:
    """Generated bodies name random tensors, so Triton refuses them; this one succeeds."""
    operation = api_schema["/v2/models/{model}/infer"]["POST"]
    case = operation.Case(
        path_parameters={"model": "double"}, body=body, media_type="application/json"
    )
    response = case.call_and_validate(
        base_url=gateway.url,
        headers=fuzz_tenant.headers,
        checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
    )
    assert response.status_code == 200
