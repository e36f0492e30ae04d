"""API keys: hashing at rest, expiry, revocation across gateway processes within one second."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import Cli, Gateway, TenantKey, start_gateway, stop_process
from tests.support import sync_pg_url

GOOD = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}


def test_only_a_keyed_hash_of_the_key_is_stored(database_url: str, make_tenant: Any) -> None:
    t: TenantKey = make_tenant()
    assert t.secret.startswith(f"mk_live_{t.prefix}_")
    assert len(t.secret) >= 55
    with psycopg.connect(sync_pg_url(database_url)) as conn:
        rows = conn.execute("select * from api_keys where prefix = %s", (t.prefix,)).fetchall()
        assert len(rows) == 1
        assert all(t.secret not in str(col) for col in rows[0])
        secret_part = t.secret.rsplit("_", 1)[1]
        dump = conn.execute("select row_to_json(k)::text from api_keys k").fetchall()
        assert all(secret_part not in row[0] for row in dump)


def test_revoked_key_is_refused_by_two_gateway_processes_within_one_second(
    base_env: dict[str, str], artifacts: Path, cli: Cli, make_tenant: Any, gateway: Gateway
) -> None:
    t: TenantKey = make_tenant()
    second = start_gateway(base_env, artifacts / "gateway-2.log")
    try:
        urls = [gateway.url, second.url]
        # Both processes have the principal cached now.
        for url in urls:
            r = httpx.post(f"{url}/v2/models/double/infer", headers=t.headers, json=GOOD)
            assert r.status_code == 200, r.text
        revoked = cli.json("keys", "revoke", t.key_id)
        revoked_at = time.monotonic()
        assert revoked["gateways_notified"] >= 2
        refused_after: dict[str, float] = {}
        while len(refused_after) < 2 and time.monotonic() - revoked_at < 5:
            for url in urls:
                if url in refused_after:
                    continue
                r = httpx.post(f"{url}/v2/models/double/infer", headers=t.headers, json=GOOD)
                if r.status_code == 401:
                    assert r.json()["code"] == "api_key_revoked"
                    refused_after[url] = time.monotonic() - revoked_at
        assert set(refused_after) == set(urls)
        assert max(refused_after.values()) < 1.0, refused_after
    finally:
        stop_process(second.process)


def test_expired_key_is_401(cli: Cli, make_tenant: Any, gateway: Gateway) -> None:
    t: TenantKey = make_tenant()
    # Far enough ahead that a slow CLI start on a busy machine cannot outlast it.
    expires = datetime.now(UTC) + timedelta(seconds=15)
    key = cli.json("keys", "create", t.tenant, "--name", "short", "--expires", expires.isoformat())
    headers = {"Authorization": f"Bearer {key['secret']}"}
    r = httpx.post(f"{gateway.url}/v2/models/double/infer", headers=headers, json=GOOD)
    assert r.status_code == 200
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    r = httpx.post(f"{gateway.url}/v2/models/double/infer", headers=headers, json=GOOD)
    assert r.status_code == 401
    assert r.json()["code"] == "api_key_expired"
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    key = cli.json("keys", "create", t.tenant, "--name", "old", "--expires", past)
    r = httpx.post(
        f"{gateway.url}/v2/models/double/infer",
        headers={"Authorization": f"Bearer {key['secret']}"},
        json=GOOD,
    )
    assert r.status_code == 401
    assert r.json()["code"] == "api_key_expired"


def test_restricted_model_is_404_until_granted(
    cli: Cli, make_tenant: Any, gateway: Gateway
) -> None:
    a: TenantKey = make_tenant()
    b: TenantKey = make_tenant()
    cli.json("models", "publish", "echo_params", "--restricted")
    try:
        body = {"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}]}
        cli.json("models", "grant", "echo_params", a.tenant)
        time.sleep(5.5)  # principal cache TTL
        ra = httpx.post(f"{gateway.url}/v2/models/echo_params/infer", headers=a.headers, json=body)
        rb = httpx.post(f"{gateway.url}/v2/models/echo_params/infer", headers=b.headers, json=body)
        assert ra.status_code == 200, ra.text
        assert rb.status_code == 404
        assert rb.json()["code"] == "model_not_found"
    finally:
        cli.json("models", "publish", "echo_params")


@pytest.mark.parametrize("workers", [2])
def test_multi_worker_serving_answers(
    base_env: dict[str, str],
    artifacts: Path,
    make_tenant: Any,
    published_models: list[str],
    workers: int,
) -> None:
    t: TenantKey = make_tenant()
    gw = start_gateway(base_env, artifacts / "gateway-workers.log", workers=workers)
    try:
        codes = [
            httpx.post(f"{gw.url}/v2/models/double/infer", headers=t.headers, json=GOOD).status_code
            for _ in range(20)
        ]
        assert codes == [200] * 20
    finally:
        stop_process(gw.process)
