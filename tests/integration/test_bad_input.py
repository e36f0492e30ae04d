"""Hostile and malformed input against a real gateway, beyond ``test_errors.py``: every case is a
clear 4xx with a stable code, never reaches Triton (its own statistics say so) and is never
billed (the tenant's Redis counters stay empty).

Requests whose HTTP framing is broken (CR/LF or NUL inside a header, a negative Content-Length)
are refused by the HTTP server itself with a plain 400 before the application sees them; those
cases check the 400, that nothing reached Triton and that nothing was billed.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from tests.conftest import Gateway, TenantKey, TritonServer
from tests.integration.helpers import metered, triton_inference_count

MODEL = "double"
GOOD: dict[str, Any] = {
    "inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]
}


@pytest.fixture(scope="module")
def tenant(make_tenant: Callable[..., TenantKey]) -> TenantKey:
    return make_tenant()


@pytest.fixture
def untouched(
    triton: TritonServer, redis_client: redis.Redis, redis_prefix: str, tenant: TenantKey
) -> Iterator[None]:
    """After the test: Triton ran nothing more for the test models, the tenant was not billed."""
    models = (MODEL, "all_types")
    before = {m: triton_inference_count(triton, m) for m in models}
    yield
    assert {m: triton_inference_count(triton, m) for m in models} == before
    assert metered(redis_client, redis_prefix, tenant.tenant_id) == {}


def expect_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "code"}, body
    assert body["code"] == code
    assert body["error"]
    assert response.headers["x-request-id"]


def infer(
    gateway: Gateway,
    tenant: TenantKey,
    body: bytes,
    model: str = MODEL,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v2/models/{model}/infer",
        headers={**tenant.headers, **(headers or {})},
        content=body,
        timeout=60,
    )


def tensor(datatype: str, shape: Any, data: str, name: str = "INPUT0") -> bytes:
    """A one-input body whose ``data`` is spliced in as raw text (to send non-JSON literals)."""
    head = json.dumps({"name": name, "shape": shape, "datatype": datatype})
    return ('{"inputs": [' + head[:-1] + ', "data": ' + data + "}]}").encode()


def nested(levels: int, leaf: str = "1") -> str:
    return "[" * levels + leaf + "]" * levels


# --- sizes and nesting ------------------------------------------------------------------------


@pytest.mark.usefixtures("untouched")
def test_streamed_body_over_the_limit_is_413(gateway: Gateway, tenant: TenantKey) -> None:
    """No Content-Length to go by (chunked): the limit still holds while the body streams in."""

    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ['
        for _ in range(10):
            yield b" " * (1024 * 1024)
        yield b"]}"

    r = httpx.post(
        f"{gateway.url}/v2/models/{MODEL}/infer",
        headers=tenant.headers,
        content=chunks(),
        timeout=60,
    )
    expect_error(r, 413, "payload_too_large")


@pytest.mark.usefixtures("untouched")
def test_content_length_claiming_more_than_the_limit_is_413(
    gateway: Gateway, tenant: TenantKey
) -> None:
    request = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {tenant.secret}\r\nContent-Length: 99999999999\r\n"
        "Connection: close\r\n\r\n{}"
    ).encode()
    status, body = raw_exchange(gateway, request)
    assert status == 413
    assert json.loads(body)["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(tensor("FP32", [1], nested(100)), id="deep-data"),
        pytest.param(
            json.dumps({"inputs": [], "parameters": {"x": json.loads(nested(100))}}).encode(),
            id="deep-parameters",
        ),
        pytest.param(
            ('{"inputs": [], "outputs": [{"name": "o", "extra": ' + nested(100) + "}]}").encode(),
            id="deep-unknown-field",
        ),
        pytest.param(tensor("FP32", [1], nested(100_000)), id="very-deep-data"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="very-deep-objects"),
    ],
)
@pytest.mark.usefixtures("untouched")
def test_json_nested_deeper_than_the_limit_is_400(
    gateway: Gateway, tenant: TenantKey, body: bytes
) -> None:
    expect_error(infer(gateway, tenant, body), 400, "invalid_json")


# --- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "code"),
    [
        pytest.param([100_000, 100_000], "invalid_tensor", id="element-count-over-limit"),
        pytest.param([2**62, 4], "invalid_tensor", id="product-overflows-int64"),
        pytest.param([2**63 - 1] * 8, "invalid_tensor", id="product-of-max-dims"),
        pytest.param([2**63], "invalid_inference_request", id="dim-over-int64"),
        pytest.param([-1], "invalid_inference_request", id="negative-dim"),
        pytest.param([-(2**63)], "invalid_inference_request", id="most-negative-dim"),
        pytest.param([1.5], "invalid_inference_request", id="fractional-dim"),
        pytest.param([[1]], "invalid_inference_request", id="nested-shape"),
        pytest.param(None, "invalid_inference_request", id="null-shape"),
    ],
)
@pytest.mark.usefixtures("untouched")
def test_impossible_shape_is_400(
    gateway: Gateway, tenant: TenantKey, shape: Any, code: str
) -> None:
    expect_error(infer(gateway, tenant, tensor("FP32", shape, "[1, 2]")), 400, code)


# --- data -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "data", "code"),
    [
        pytest.param("FP32", "[Infinity, 1]", "invalid_json", id="fp32-infinity-literal"),
        pytest.param("FP32", "[-Infinity, 1]", "invalid_json", id="fp32-minus-infinity"),
        pytest.param("FP64", "[NaN, 1]", "invalid_json", id="fp64-nan"),
        pytest.param("FP32", "[1e39, 1]", "invalid_tensor", id="fp32-overflows-to-inf"),
        pytest.param("FP32", "[1e999, 1]", "invalid_tensor", id="number-beyond-float64"),
        pytest.param("INT32", "[NaN, 1]", "invalid_json", id="int-nan"),
        pytest.param("INT64", "[Infinity, 1]", "invalid_json", id="int-infinity"),
        pytest.param("INT32", "[1.5, 2]", "invalid_tensor", id="int-fraction"),
        pytest.param("INT64", "[9223372036854775808, 1]", "invalid_tensor", id="int64-overflow"),
        pytest.param("UINT8", "[-1, 1]", "invalid_tensor", id="uint-negative"),
        pytest.param("BOOL", "[1, 0]", "invalid_tensor", id="bool-as-numbers"),
        pytest.param("FP32", '["1", "2"]', "invalid_tensor", id="numbers-as-strings"),
        pytest.param("FP32", "[1, 2, 3]", "invalid_tensor", id="more-data-than-shape"),
        pytest.param("FP32", "[]", "invalid_tensor", id="empty-data"),
        pytest.param("FP32", "[[1], [2, 3]]", "invalid_tensor", id="ragged"),
        pytest.param("FP32", "null", "invalid_tensor", id="null-data"),
        pytest.param("BYTES", '["\\udc80", "a"]', "invalid_json", id="bytes-lone-surrogate"),
        pytest.param("BYTES", '["\\ud800\\u0041", "a"]', "invalid_json", id="bytes-bad-pair"),
    ],
)
@pytest.mark.usefixtures("untouched")
def test_bad_tensor_data_is_400(
    gateway: Gateway, tenant: TenantKey, datatype: str, data: str, code: str
) -> None:
    expect_error(infer(gateway, tenant, tensor(datatype, [1, 2], data)), 400, code)


@pytest.mark.parametrize("datatype", ["fp32", "FLOAT32", "", "FP32 ", "TYPE_FP32", "STRING"])
@pytest.mark.usefixtures("untouched")
def test_unknown_datatype_name_is_400(gateway: Gateway, tenant: TenantKey, datatype: str) -> None:
    r = infer(gateway, tenant, tensor(datatype, [1, 2], "[1, 2]"))
    expect_error(r, 400, "invalid_inference_request")
    assert "datatype" in r.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"inputs": [{"name": "caf\xe9"}]}', id="latin-1-in-a-string"),
        pytest.param(json.dumps(GOOD).encode("utf-16"), id="utf-16-body"),
        pytest.param(b'{"inputs": [], "id": "\xc0\x80"}', id="overlong-utf8-nul"),
        pytest.param(b'{"inputs": [], "id": "\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
        pytest.param(
            b'{"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "BYTES",'
            b' "data": ["\xff\xfe"]}]}',
            id="raw-bytes-in-a-bytes-tensor",
        ),
    ],
)
@pytest.mark.usefixtures("untouched")
def test_body_that_is_not_utf8_is_400(gateway: Gateway, tenant: TenantKey, body: bytes) -> None:
    expect_error(infer(gateway, tenant, body), 400, "invalid_json")


# --- the binary extension's header ------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("99999", id="larger-than-body"),
        pytest.param("-1", id="negative"),
        pytest.param("abc", id="non-numeric"),
        pytest.param("1e3", id="exponent"),
        pytest.param("+12", id="plus-sign"),
        pytest.param("9" * 5000, id="five-thousand-digits"),
        pytest.param("\u00b2", id="superscript-two"),
        pytest.param("", id="empty"),
    ],
)
@pytest.mark.usefixtures("untouched")
def test_bad_inference_header_content_length_is_400(
    gateway: Gateway, tenant: TenantKey, value: str
) -> None:
    request = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {tenant.secret}\r\n"
    ).encode()
    body = json.dumps(GOOD).encode()
    request += b"Inference-Header-Content-Length: " + value.encode("latin-1") + b"\r\n"
    request += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    status, answer = raw_exchange(gateway, request)
    assert status == 400, answer
    assert json.loads(answer)["code"] == "invalid_inference_request"


# --- headers and HTTP framing ------------------------------------------------------------------


def raw_exchange(gateway: Gateway, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (httpx refuses to send malformed headers); return status, body."""
    url = urlsplit(gateway.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"X-Note: a\rInjected: b", id="bare-cr"),
        pytest.param(b"X-Note: a\nInjected: b", id="bare-lf-in-value"),
        pytest.param(b"X-Note: a\x00b", id="nul"),
        pytest.param(b"X Note: a", id="space-in-name"),
        pytest.param(b"Content-Length: -5", id="negative-content-length"),
    ],
)
@pytest.mark.usefixtures("untouched")
def test_malformed_header_is_refused_by_the_http_server(
    gateway: Gateway, tenant: TenantKey, header: bytes
) -> None:
    body = json.dumps(GOOD).encode()
    length = b"" if header.startswith(b"Content-Length") else b"Content-Length: %d\r\n" % len(body)
    request = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {tenant.secret}\r\n"
    ).encode()
    request += header + b"\r\n" + length + b"Connection: close\r\n\r\n" + body
    status, _ = raw_exchange(gateway, request)
    assert status == 400


@pytest.mark.usefixtures("untouched")
def test_injected_request_id_is_not_echoed(gateway: Gateway, tenant: TenantKey) -> None:
    """A caller's X-Request-Id is echoed only when it is a plain token."""
    r = infer(
        gateway,
        tenant,
        b"{bad",
        headers={"X-Request-Id": "abc<script>;Set-Cookie=x"},
    )
    expect_error(r, 400, "invalid_json")
    assert r.headers["x-request-id"] != "abc<script>;Set-Cookie=x"
    assert "set-cookie" not in r.headers


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"X-Padding": "a" * 20_000}, id="one-overlong-header"),
        pytest.param({f"X-Pad-{i}": "v" * 30 for i in range(600)}, id="many-headers"),
    ],
)
@pytest.mark.usefixtures("untouched")
def test_oversized_headers_are_431(
    gateway: Gateway, tenant: TenantKey, extra: dict[str, str]
) -> None:
    r = infer(gateway, tenant, json.dumps(GOOD).encode(), headers=extra)
    expect_error(r, 431, "headers_too_large")


@pytest.mark.usefixtures("untouched")
def test_overlong_authorization_header_is_431_before_any_key_lookup(
    gateway: Gateway, tenant: TenantKey
) -> None:
    r = httpx.post(
        f"{gateway.url}/v2/models/{MODEL}/infer",
        headers={"Authorization": tenant.secret + "x" * 40_000},
        json=GOOD,
    )
    expect_error(r, 431, "headers_too_large")


@pytest.mark.usefixtures("untouched")
def test_key_that_is_not_latin1_text_is_401(gateway: Gateway, tenant: TenantKey) -> None:
    body = json.dumps(GOOD).encode()
    request = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Authorization: Bearer mk_live_\xff\xfe_"
        + b"A" * 40
        + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    status, answer = raw_exchange(gateway, request)
    assert status == 401
    assert json.loads(answer)["code"] == "invalid_api_key"


# --- model names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "code"),
    [
        pytest.param("/v2/models/..%2F..%2Fv1%2Fusage/infer", "not_found", id="encoded-traversal"),
        pytest.param("/v2/models/../../v1/usage/infer", "not_found", id="dot-dot"),
        pytest.param("/v2/models/double%2F..%2Fdouble/infer", "not_found", id="slash-in-name"),
        pytest.param("/v2/models/double%00/infer", "model_not_found", id="nul"),
        pytest.param("/v2/models/%ff%fe/infer", "model_not_found", id="not-utf8"),
        pytest.param("/v2/models/DOUBLE/infer", "model_not_found", id="other-case"),
        pytest.param("/v2/models/double%20/infer", "model_not_found", id="trailing-space"),
        pytest.param("/v2/models/%E2%80%AEelbuod/infer", "model_not_found", id="bidi-override"),
        pytest.param("/v2/models/" + "d" * 5000 + "/infer", "model_not_found", id="very-long"),
        pytest.param("/v2/models/double/versions/..%2F1/infer", "not_found", id="version-dots"),
    ],
)
@pytest.mark.usefixtures("untouched")
def test_odd_model_names_are_404_and_never_reach_triton(
    gateway: Gateway, tenant: TenantKey, path: str, code: str
) -> None:
    r = httpx.post(f"{gateway.url}{path}", headers=tenant.headers, json=GOOD)
    assert r.status_code == 404, r.text
    assert r.json()["code"] in {code, "model_not_found"}


# --- the usage API's query --------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"start": "9999-12-31T23:00:00-05:00"}, id="end-of-time-in-utc"),
        pytest.param({"start": "0001-01-01T00:00:00+05:00"}, id="before-year-one-in-utc"),
        pytest.param({"start": "2026-13-01"}, id="month-13"),
        pytest.param({"start": "2026-02-30"}, id="february-30"),
        pytest.param({"start": "9" * 5000}, id="five-thousand-digits"),
        pytest.param({"start": "\x00"}, id="nul"),
        pytest.param({"start": "2026-01-01T00:00:00"}, id="no-time-zone"),
        pytest.param({"start": "2026-02-01", "end": "2026-01-01"}, id="start-after-end"),
        pytest.param({"start": "2026-01-01", "end": "2026-01-01"}, id="start-equals-end"),
        pytest.param({"start": "2020-01-01", "end": "2026-01-01"}, id="range-too-long"),
        pytest.param({"granularity": "minute"}, id="granularity"),
        pytest.param({"granularity": ""}, id="empty-granularity"),
    ],
)
def test_bad_usage_query_is_400_invalid_query(
    gateway: Gateway, tenant: TenantKey, query: dict[str, str]
) -> None:
    r = httpx.get(f"{gateway.url}/v1/usage", headers=tenant.headers, params=query)
    expect_error(r, 400, "invalid_query")


def test_unknown_usage_query_parameters_are_ignored_and_change_nothing(
    gateway: Gateway, tenant: TenantKey, make_tenant: Callable[..., TenantKey]
) -> None:
    other = make_tenant()
    plain = httpx.get(f"{gateway.url}/v1/usage", headers=tenant.headers)
    assert plain.status_code == 200
    odd = httpx.get(
        f"{gateway.url}/v1/usage",
        headers=tenant.headers,
        params={"tenant": other.tenant_id, "tenant_id": other.tenant_id, "limit": "-1"},
    )
    assert odd.status_code == 200
    assert odd.json() == plain.json()
