"""Layout of the hot usage counters in Redis, shared by the gateway (writer) and billing (reader).

One hash per tenant, ``<prefix>usage:{<tenant id>}``: the braces are a Redis Cluster hash tag so a
tenant's live and drain keys share a slot. A field is ``<bucket>|<model>|<metric>`` where
``bucket`` is the UTC epoch second at which the 5-minute bucket starts (SLA availability needs
5-minute resolution; hours and days are sums of buckets), and ``metric`` is one of:

- ``r``: successful, billable requests
- ``g``: GPU time in integer microseconds (for now: backend call duration x model GPU share)
- ``f``: requests that failed for platform reasons (5xx), not billed, counted for availability
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

BUCKET_SECONDS = 300

REQUESTS = "r"
GPU_US = "g"
FAILURES = "f"
METRICS = (REQUESTS, GPU_US, FAILURES)


def live_key(prefix: str, tenant_id: uuid.UUID | str) -> str:
    return f"{prefix}usage:{{{tenant_id}}}"


def live_key_pattern(prefix: str) -> str:
    return f"{prefix}usage:{{*}}"


def bucket_of(epoch_seconds: float) -> int:
    return int(epoch_seconds) // BUCKET_SECONDS * BUCKET_SECONDS


def field(bucket: int, model: str, metric: str) -> str:
    return f"{bucket}|{model}|{metric}"


@dataclass(frozen=True, slots=True)
class CounterField:
    bucket: datetime
    model: str
    metric: str


def parse_field(raw: str | bytes) -> CounterField | None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    bucket, sep, rest = text.partition("|")
    model, sep2, metric = rest.rpartition("|")
    if not sep or not sep2 or metric not in METRICS or not bucket.isdigit():
        return None
    return CounterField(datetime.fromtimestamp(int(bucket), UTC), model, metric)
