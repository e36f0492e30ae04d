"""Postgres (behind a proxy the test cuts) or Redis away: authenticated tenants are served from
the principal cache for a bounded time, then refused with 503, never 401."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from tests.conftest import TenantKey, app_settings, free_port
from tests.faults import TcpProxy

GOOD = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 5432)
    proxy.restore()
    yield proxy
    proxy.cut()


def _through(proxy: TcpProxy, database_url: str) -> str:
    return database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")


async def _infer(client: AsyncTestClient[Any], t: TenantKey) -> tuple[int, str | None]:
    r = await client.post("/v2/models/double/infer", headers=t.headers, json=GOOD)
    return r.status_code, None if r.status_code == 200 else r.json()["code"]


async def test_postgres_down_serves_cached_keys_up_to_max_staleness_then_503(
    base_env: dict[str, str],
    published_models: list[str],
    make_tenant: Callable[..., TenantKey],
    pg_proxy: TcpProxy,
) -> None:
    seen, unseen = make_tenant(), make_tenant()
    settings = app_settings(
        base_env,
        database_url=_through(pg_proxy, base_env["MAAS_DATABASE_URL"]),
        principal_cache_ttl_s=0.2,
        principal_max_stale_s=3,
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        assert await _infer(client, seen) == (200, None)
        pg_proxy.cut()
        await asyncio.sleep(0.5)  # past the cache TTL: a lookup is due, Postgres cannot answer
        assert await _infer(client, seen) == (200, None)
        # a key never seen cannot be checked: 503, not 401 (it may well be valid)
        assert await _infer(client, unseen) == (503, "auth_unavailable")
        # a wrong secret for a cached prefix is still refused outright
        last = "a" if seen.secret[-1] != "a" else "b"
        wrong = dataclasses.replace(seen, secret=seen.secret[:-1] + last)
        assert (await _infer(client, wrong))[0] == 401
        await asyncio.sleep(3)  # past the maximum staleness
        assert await _infer(client, seen) == (503, "auth_unavailable")
        pg_proxy.restore()
        await asyncio.sleep(1.2)  # the gateway waits a second between lookups that failed
        assert await _infer(client, seen) == (200, None)
        assert await _infer(client, unseen) == (200, None)


async def test_with_redis_away_too_the_cache_is_trusted_for_less(
    base_env: dict[str, str],
    published_models: list[str],
    make_tenant: Callable[..., TenantKey],
    pg_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    t = make_tenant()
    settings = app_settings(
        base_env,
        database_url=_through(pg_proxy, base_env["MAAS_DATABASE_URL"]),
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: no revocations heard
        meter_buffer_dir=str(tmp_path),
        principal_cache_ttl_s=0.2,
        principal_max_stale_s=60,
        principal_max_stale_unlistened_s=1.5,
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        assert await _infer(client, t) == (200, None)  # metered into the local buffer
        pg_proxy.cut()
        await asyncio.sleep(0.5)
        assert await _infer(client, t) == (200, None)
        await asyncio.sleep(1.5)
        assert await _infer(client, t) == (503, "auth_unavailable")
    assert list(tmp_path.iterdir())  # the two 200s wait on disk for Redis
