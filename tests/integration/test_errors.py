"""Bad input and platform failures: the right status and code, nothing billed, nothing sent
to Triton when the gateway can tell it is bad."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from tests.conftest import Gateway, TenantKey, TritonServer, app_settings, free_port
from tests.integration.helpers import metered, triton_inference_count

GOOD = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}


@pytest.fixture(scope="module")
def tenant(make_tenant: Callable[..., TenantKey]) -> TenantKey:
    return make_tenant()


def _bad(inputs: list[dict[str, Any]]) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


BAD_BODIES = [
    pytest.param(b"{not json", "invalid_json", id="malformed-json"),
    pytest.param(
        b'{"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "FP32", "data": [NaN]}]}',
        "invalid_json",
        id="nan-literal",
    ),
    pytest.param(b"\xff\xfe{}", "invalid_json", id="not-utf8"),
    pytest.param(b"[" * 200 + b"]" * 200, "invalid_json", id="too-deep"),
    pytest.param(b'{"outputs": []}', "invalid_inference_request", id="no-inputs"),
    pytest.param(
        _bad([{"name": "INPUT0", "shape": "12", "datatype": "FP32", "data": [1]}]),
        "invalid_inference_request",
        id="shape-not-list",
    ),
    pytest.param(
        _bad([{"name": "INPUT0", "shape": [1, -2], "datatype": "FP32", "data": [1, 2]}]),
        "invalid_inference_request",
        id="negative-dim",
    ),
    pytest.param(
        _bad([{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]),
        "invalid_tensor",
        id="count-mismatch",
    ),
    pytest.param(
        _bad([{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}]),
        "invalid_tensor",
        id="string-in-fp32",
    ),
    pytest.param(
        _bad([{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [True, 1]}]),
        "invalid_tensor",
        id="bool-in-fp32",
    ),
    pytest.param(
        _bad([{"name": "INPUT0", "shape": [1, 2], "datatype": "FP99", "data": [1, 2]}]),
        "invalid_inference_request",
        id="unknown-datatype",
    ),
    pytest.param(
        _bad(
            [
                {
                    "name": "INPUT0",
                    "shape": [1, 2],
                    "datatype": "FP32",
                    "data": [1, 2],
                    "parameters": {"shared_memory_region": "x"},
                }
            ]
        ),
        "invalid_inference_request",
        id="shared-memory",
    ),
]


@pytest.mark.parametrize(("body", "code"), BAD_BODIES)
def test_bad_request_is_400_never_reaches_triton_and_is_not_billed(
    gateway: Gateway,
    tenant: TenantKey,
    triton: TritonServer,
    redis_client: redis.Redis,
    redis_prefix: str,
    body: bytes,
    code: str,
) -> None:
    before = triton_inference_count(triton, "double")
    r = httpx.post(f"{gateway.url}/v2/models/double/infer", headers=tenant.headers, content=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == code
    assert r.json()["error"]
    assert triton_inference_count(triton, "double") == before
    assert metered(redis_client, redis_prefix, tenant.tenant_id) == {}


def test_int_out_of_range_is_400(gateway: Gateway, tenant: TenantKey) -> None:
    body = {"inputs": [{"name": "IN_INT8", "shape": [1], "datatype": "INT8", "data": [300]}]}
    r = httpx.post(f"{gateway.url}/v2/models/all_types/infer", headers=tenant.headers, json=body)
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_tensor"


def test_wrong_datatype_for_the_model_is_rejected_by_triton_as_400(
    gateway: Gateway, tenant: TenantKey, redis_client: redis.Redis, redis_prefix: str
) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}
    r = httpx.post(f"{gateway.url}/v2/models/double/infer", headers=tenant.headers, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "backend_invalid_argument"
    assert metered(redis_client, redis_prefix, tenant.tenant_id) == {}


def test_body_over_the_limit_is_413(gateway: Gateway, tenant: TenantKey) -> None:
    big = b'{"inputs": [' + b" " * (9 * 1024 * 1024) + b"]}"
    r = httpx.post(f"{gateway.url}/v2/models/double/infer", headers=tenant.headers, content=big)
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "unauthenticated"),
        ({"Authorization": "Basic abc"}, "unauthenticated"),
        ({"Authorization": "Bearer nope"}, "invalid_api_key"),
        ({"Authorization": "Bearer mk_live_AAAAAAAAAA_" + "B" * 40}, "invalid_api_key"),
    ],
)
def test_missing_or_invalid_key_is_401(
    gateway: Gateway, headers: dict[str, str], code: str
) -> None:
    r = httpx.post(f"{gateway.url}/v2/models/double/infer", headers=headers, json=GOOD)
    assert r.status_code == 401
    assert r.json()["code"] == code


def test_right_prefix_wrong_secret_is_401_even_when_cached(
    gateway: Gateway, tenant: TenantKey
) -> None:
    assert (
        httpx.post(
            f"{gateway.url}/v2/models/double/infer", headers=tenant.headers, json=GOOD
        ).status_code
        == 200
    )
    forged = tenant.secret[:-1] + ("A" if tenant.secret[-1] != "A" else "B")
    r = httpx.post(
        f"{gateway.url}/v2/models/double/infer",
        headers={"Authorization": f"Bearer {forged}"},
        json=GOOD,
    )
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_api_key"


def test_unpublished_model_is_404(gateway: Gateway, tenant: TenantKey) -> None:
    r = httpx.post(f"{gateway.url}/v2/models/not_there/infer", headers=tenant.headers, json=GOOD)
    assert r.status_code == 404
    assert r.json()["code"] == "model_not_found"
    r = httpx.get(f"{gateway.url}/v2/models/not_there", headers=tenant.headers)
    assert r.status_code == 404


def test_unknown_route_is_json_404(gateway: Gateway) -> None:
    r = httpx.get(f"{gateway.url}/nope")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    assert r.headers["x-request-id"]


def test_platform_failure_is_5xx_counted_as_failure_and_not_billed(
    gateway: Gateway, make_tenant: Any, redis_client: redis.Redis, redis_prefix: str
) -> None:
    t = make_tenant()
    body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}
    r = httpx.post(f"{gateway.url}/v2/models/fail/infer", headers=t.headers, json=body)
    assert r.status_code == 502, r.text
    assert r.json()["code"] == "backend_error"
    assert metered(redis_client, redis_prefix, t.tenant_id) == {("fail", "f"): 1}


async def test_triton_down_is_503_and_counted_as_failure(
    base_env: dict[str, str], make_tenant: Any, redis_client: redis.Redis, redis_prefix: str
) -> None:
    t = make_tenant()
    settings = app_settings(
        base_env,
        triton_url=f"127.0.0.1:{free_port()}",  # nothing listens there
        triton_timeout_s=2,
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        r = await client.post("/v2/models/double/infer", headers=t.headers, json=GOOD)
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "backend_unavailable"
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503
    assert metered(redis_client, redis_prefix, t.tenant_id) == {("double", "f"): 1}


async def test_triton_deadline_is_504(
    base_env: dict[str, str], make_tenant: Any, redis_client: redis.Redis, redis_prefix: str
) -> None:
    t = make_tenant()
    settings = app_settings(base_env, triton_timeout_s=0.3)
    body = {"inputs": [{"name": "SECONDS", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    async with AsyncTestClient(app=create_app(settings)) as client:
        r = await client.post("/v2/models/slow/infer", headers=t.headers, json=body)
        assert r.status_code == 504, r.text
        assert r.json()["code"] == "backend_timeout"
    assert metered(redis_client, redis_prefix, t.tenant_id) == {("slow", "f"): 1}
