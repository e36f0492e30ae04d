"""Inference through the gateway to a real Triton: datatypes, binary extension, metadata."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from tests.conftest import Gateway, TenantKey
from tests.triton_models import DATATYPES

SAMPLES: dict[str, list[Any]] = {
    "BOOL": [True, False, True],
    "INT8": [-128, 0, 127],
    "INT16": [-32768, 1, 32767],
    "INT32": [-(2**31), 7, 2**31 - 1],
    "INT64": [-(2**63), 9, 2**63 - 1],
    "UINT8": [0, 1, 255],
    "UINT16": [0, 2, 65535],
    "UINT32": [0, 3, 2**32 - 1],
    "UINT64": [0, 4, 2**64 - 1],
    "FP16": [0.5, -2.0, 65504.0],
    "FP32": [1.5, -0.25, 2.0**100],  # exactly representable in float32
    "FP64": [1e-300, -2.5, 1.7976931348623157e308],
    "BYTES": ["héllo", "", "ünïcode ✓"],
}


@pytest.fixture(scope="module")
def tenant(make_tenant: Callable[..., TenantKey]) -> TenantKey:
    return make_tenant()


def post_infer(gw: Gateway, key: TenantKey, model: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v2/models/{model}/infer",
        headers=key.headers,
        content=json.dumps(body).encode() if not isinstance(body, bytes) else body,
        timeout=30,
        **kw,
    )


def test_every_datatype_round_trips_as_json_in_one_multi_io_request(
    gateway: Gateway, tenant: TenantKey
) -> None:
    body = {
        "id": "req-1",
        "inputs": [
            {"name": f"IN_{dt}", "shape": [3], "datatype": dt, "data": SAMPLES[dt]}
            for dt in DATATYPES
        ],
    }
    r = post_infer(gateway, tenant, "all_types", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "all_types"
    assert out["id"] == "req-1"
    by_name = {o["name"]: o for o in out["outputs"]}
    assert set(by_name) == {f"OUT_{dt}" for dt in DATATYPES}
    for dt in DATATYPES:
        o = by_name[f"OUT_{dt}"]
        assert o["datatype"] == dt
        assert o["shape"] == [3]
        assert o["data"] == SAMPLES[dt], dt
    assert r.headers["x-request-id"]


def test_requested_outputs_subset_and_nested_data(gateway: Gateway, tenant: TenantKey) -> None:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "IN_INT32", "shape": [4], "datatype": "INT32", "data": [[1, 2], [3, 4]]},
            {"name": "IN_FP64", "shape": [2], "datatype": "FP64", "data": [0.5, 1.5]},
        ],
        "outputs": [{"name": "OUT_FP64"}],
    }
    # Nested data must match the shape when nested: [4] with [[..],[..]] is refused.
    r = post_infer(gateway, tenant, "all_types", body)
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_tensor"
    body["inputs"][0]["data"] = [1, 2, 3, 4]
    r = post_infer(gateway, tenant, "all_types", body)
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    assert [o["name"] for o in outputs] == ["OUT_FP64"]
    assert outputs[0]["data"] == [0.5, 1.5]


def test_request_parameters_reach_the_model(gateway: Gateway, tenant: TenantKey) -> None:
    body = {
        "parameters": {"temperature": 0.5, "mode": "fast", "top_k": 3, "stream": False},
        "inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": [1, 2]}],
    }
    r = post_infer(gateway, tenant, "echo_params", body)
    assert r.status_code == 200, r.text
    params = json.loads(next(o for o in r.json()["outputs"] if o["name"] == "PARAMS")["data"][0])
    assert params["mode"] == "fast"
    assert params["top_k"] == 3
    assert params["temperature"] == 0.5
    assert params["stream"] is False


def test_version_path_is_forwarded(gateway: Gateway, tenant: TenantKey) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    r = httpx.post(
        f"{gateway.url}/v2/models/double/versions/1/infer", headers=tenant.headers, json=body
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [2.0, 4.0]
    assert r.json()["model_version"] == "1"
    r = httpx.post(
        f"{gateway.url}/v2/models/double/versions/7/infer", headers=tenant.headers, json=body
    )
    assert r.status_code in (400, 404)
    assert "code" in r.json()


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_works_unchanged_through_the_gateway(
    gateway: Gateway, tenant: TenantKey, binary: bool
) -> None:
    client = triton_http.InferenceServerClient(gateway.url.removeprefix("http://"))
    try:
        assert client.is_server_live(headers=tenant.headers)
        assert client.is_model_ready("all_types", headers=tenant.headers)
        meta = client.get_model_metadata("all_types", headers=tenant.headers)
        assert {i["name"] for i in meta["inputs"]} == {f"IN_{dt}" for dt in DATATYPES}
        inputs, outputs, expected = [], [], {}
        for dt, npt in DATATYPES.items():
            arr = np.array(
                [s.encode() for s in SAMPLES[dt]] if dt == "BYTES" else SAMPLES[dt],
                dtype=object if dt == "BYTES" else npt,
            )
            inp = triton_http.InferInput(f"IN_{dt}", [3], dt)
            inp.set_data_from_numpy(arr, binary_data=binary)
            inputs.append(inp)
            outputs.append(triton_http.InferRequestedOutput(f"OUT_{dt}", binary_data=binary))
            expected[dt] = arr
        result = client.infer(
            "all_types", inputs, outputs=outputs, headers=tenant.headers, request_id="tc-1"
        )
        for dt in DATATYPES:
            got = result.as_numpy(f"OUT_{dt}")
            assert got is not None, dt
            if dt == "BYTES":
                assert [bytes(x) if not isinstance(x, str) else x.encode() for x in got] == list(
                    expected[dt]
                )
            else:
                np.testing.assert_array_equal(got, expected[dt])
        assert result.get_response()["id"] == "tc-1"
    finally:
        client.close()


def test_model_metadata_and_readiness(gateway: Gateway, tenant: TenantKey) -> None:
    r = httpx.get(f"{gateway.url}/v2/models/double", headers=tenant.headers)
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["name"] == "double"
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, -1]}
    r = httpx.get(f"{gateway.url}/v2/models/double/ready", headers=tenant.headers)
    assert r.status_code == 200
    assert r.json()["ready"] is True


def test_health_live_and_ready(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/v2/health/live").json() == {"live": True}
    r = httpx.get(f"{gateway.url}/v2/health/ready")
    assert r.status_code == 200
    assert r.json() == {"ready": True}
