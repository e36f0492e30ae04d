"""Helpers the integration tests share: Triton's own statistics and the Redis counters."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import redis
import tritonclient.grpc as triton_grpc

from billing import counters
from tests.conftest import TritonServer


def triton_inference_count(triton: TritonServer, model: str) -> int:
    """Triton's own count of inferences it ran for ``model`` (its statistics extension)."""
    client = triton_grpc.InferenceServerClient(triton.grpc_url)
    try:
        stats = client.get_inference_statistics(
            model,
            headers={"triton-grpc-protocol-triton-access-token": triton.access_token},
            as_json=True,
        )
    finally:
        client.close()
    return sum(
        int(s["inference_stats"]["success"].get("count", 0))
        + int(s["inference_stats"]["fail"].get("count", 0))
        for s in stats.get("model_stats", [])
    )


def month_hash(client: redis.Redis, prefix: str, tenant_id: str) -> dict[str, int]:
    """The tenant's month quota hash that admission reads (``r``, ``g``, refusals ``x:…``)."""
    month = counters.month_of(time.time())
    raw: dict[Any, Any] = client.hgetall(counters.month_key(prefix, tenant_id, month))
    return {str(k): int(v) for k, v in raw.items()}


def metered(client: redis.Redis, prefix: str, tenant_id: str) -> dict[tuple[str, str], int]:
    """(model, metric) -> total over all buckets of the tenant's live counters."""
    totals: Counter[tuple[str, str]] = Counter()
    raw: dict[Any, Any] = client.hgetall(counters.live_key(prefix, tenant_id))
    for name, value in raw.items():
        f = counters.parse_field(name)
        assert f is not None, name
        totals[(f.model, f.metric)] += int(value)
    return dict(totals)
