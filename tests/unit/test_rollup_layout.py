"""Key layout of drains and the ledger ranges the live usage query reads."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from billing import counters
from billing.usage import LedgerRanges, ledger_ranges

TENANT = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_drain_pending_and_next_keys_share_the_tenants_hash_tag() -> None:
    tag = f"{{{TENANT}}}"
    keys = [
        counters.live_key("p:", TENANT),
        counters.drain_key("p:", TENANT, "abc"),
        counters.pending_key("p:", TENANT),
        counters.next_key("p:", TENANT),
    ]
    for key in keys:
        assert key.startswith("p:usage:")
        assert key[key.index("{") : key.index("}") + 1] == tag  # first {...} decides the slot


def test_keys_parse_back_to_their_kind() -> None:
    t = str(TENANT)
    assert counters.parse_key("p:", counters.live_key("p:", t)) == counters.UsageKey(t, "live")
    assert counters.parse_key("p:", counters.drain_key("p:", t, "d1").encode()) == (
        counters.UsageKey(t, "drain", "d1")
    )
    assert counters.parse_key("p:", counters.pending_key("p:", t)) == counters.UsageKey(
        t, "pending"
    )
    assert counters.parse_key("p:", counters.next_key("p:", t)) == counters.UsageKey(t, "next")
    for other in ["p:usage:{}", "p:usage:{x", f"p:usage:{{{t}}}:drain:", "q:usage:{x}", "p:rl:x"]:
        assert counters.parse_key("p:", other) is None


def test_scan_pattern_matches_the_prefix_literally() -> None:
    assert counters.usage_keys_pattern("a*b?[c]\\:") == "a\\*b\\?\\[c\\]\\\\:usage:{*"
    assert counters.usage_keys_pattern("maas:") == "maas:usage:{*"


def d(h: int, m: int = 0, day: int = 3) -> datetime:
    return datetime(2026, 11, day, h, m, tzinfo=UTC)


def test_whole_hours_come_from_the_hourly_table_and_edges_from_5_minute_rows() -> None:
    assert ledger_ranges(d(0), d(0, day=4)) == LedgerRanges(
        (d(0), d(0, day=4)), (d(0), d(0)), (d(0, day=4), d(0, day=4))
    )
    assert ledger_ranges(d(10, 30), d(13, 15)) == LedgerRanges(
        (d(11), d(13)), (d(10, 30), d(11)), (d(13), d(13, 15))
    )


def test_a_range_inside_one_hour_reads_5_minute_rows_only() -> None:
    r = ledger_ranges(d(10, 5), d(10, 40))
    assert r.hours[0] == r.hours[1]
    assert r.head == (d(10, 5), d(10, 40))
    assert r.tail[0] == r.tail[1]
    r = ledger_ranges(d(10, 5), d(11))
    assert r.hours[0] == r.hours[1]
    assert r.head == (d(10, 5), d(11))
