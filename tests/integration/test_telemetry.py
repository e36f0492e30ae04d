"""Tracing and metrics of the real gateway app against real Triton, Redis and Postgres."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from gateway.telemetry.sampler import SamplerConfig
from gateway.telemetry.tracing import setup_tracing
from tests.conftest import TenantKey, app_settings

BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_a_request_exports_a_server_span_with_triton_and_redis_children(
    base_env: dict[str, str],
    redis_prefix: str,
    published_models: list[str],
    make_tenant: Callable[..., TenantKey],
) -> None:
    tenant = make_tenant()
    exporter = InMemorySpanExporter()
    telemetry = setup_tracing(exporter=exporter, batch=False, sampler=SamplerConfig())
    app = create_app(app_settings(base_env), telemetry=telemetry)
    async with AsyncTestClient(app=app) as client:
        headers = {
            **tenant.headers,
            "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
            "X-Request-Id": "trace-test-1",
        }
        r = await client.post("/v2/models/double/infer", headers=headers, json=BODY)
        assert r.status_code == 200, r.text
        bad = await client.post("/v2/models/double/infer", headers=tenant.headers, content=b"{")
        assert bad.status_code == 400
        metrics = await client.get("/metrics")
    telemetry.force_flush()
    spans = exporter.get_finished_spans()
    traced = [s for s in spans if format(s.context.trace_id, "032x") == TRACE_ID]
    names = {s.name for s in traced}
    roots = [s for s in traced if s.parent is None or s.parent.is_remote]
    assert len(roots) == 1
    root = roots[0]
    attrs: dict[str, Any] = dict(root.attributes or {})
    assert attrs["maas.tenant"] == tenant.tenant_id
    assert attrs["http.response.status_code"] == 200
    assert attrs["maas.model"] == "double"
    assert attrs["sampling.probability"] == 1.0
    assert any("request" in k and v == "trace-test-1" for k, v in attrs.items())
    assert {"triton.ModelInfer", "redis.meter"} <= names
    children = [s for s in traced if s is not root]
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in children)
    assert metrics.status_code == 200
    text = metrics.text
    assert "gateway_requests_total" in text
    assert 'status="200"' in text
    assert 'status="400"' in text
    assert "gateway_triton_call_duration_seconds" in text


async def test_metrics_report_rollup_lag_after_a_rollup_pass(
    base_env: dict[str, str], redis_prefix: str, published_models: list[str]
) -> None:
    import re

    from redis.asyncio import Redis

    from billing.rollup import Rollup
    from tenants.db import make_engine

    settings = app_settings(base_env)
    engine = make_engine(settings.database_url)
    redis = Redis.from_url(settings.redis_url)
    try:
        await Rollup(redis, engine, redis_prefix).run_pass()
    finally:
        await redis.aclose()
        await engine.dispose()
    async with AsyncTestClient(app=create_app(settings)) as client:
        text = (await client.get("/metrics")).text
    match = re.search(r"^gateway_rollup_lag_seconds ([0-9.e+-]+)$", text, re.M)
    assert match is not None
    assert 0 <= float(match.group(1)) < 120


async def test_sampling_policy_changes_at_run_time_from_the_cli(
    base_env: dict[str, str], redis_prefix: str, cli: Any
) -> None:
    import asyncio

    app = create_app(app_settings(base_env))
    async with AsyncTestClient(app=app):
        sampler = app.state.services.telemetry.sampler
        configured = sampler.config.budget_per_key
        out = cli.json("telemetry", "sampling", "--budget", "3.5", "--ceiling", "40")
        assert out["overrides"] == {"budget_per_key": 3.5, "global_ceiling": 40.0}
        for _ in range(50):
            if sampler.config.budget_per_key == 3.5:
                break
            await asyncio.sleep(0.1)
        assert sampler.config.budget_per_key == 3.5
        assert sampler.config.global_ceiling == 40.0
        assert cli.run("telemetry", "sampling", "--budget", "-1").returncode == 1
        cli.json("telemetry", "sampling", "--reset")
        for _ in range(50):
            if sampler.config.budget_per_key == configured:
                break
            await asyncio.sleep(0.1)
        assert sampler.config.budget_per_key == configured
