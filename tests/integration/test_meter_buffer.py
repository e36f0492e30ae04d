"""The durable meter buffer against a real Redis: replayed exactly once, whatever the crash."""

from __future__ import annotations

import asyncio
import fcntl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from billing import counters
from gateway import errors
from gateway.meter_buffer import REPLAY_SCRIPT, Entry, MeterBuffer, replay_call
from gateway.metering import Meter
from tests.conftest import REDIS_URL
from tests.integration.helpers import metered, month_hash


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """This module's own prefix: its usage belongs to made-up tenants, which a full rollup pass
    over the session's prefix would fail to apply (no such tenant in the session database)."""
    prefix = f"maas-test-buffer-{uuid.uuid4().hex[:10]}:"
    yield prefix
    for key in redis_client.scan_iter(match=f"{prefix}*", count=1000):
        redis_client.delete(key)


@pytest.fixture
async def aredis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def _buffer(tmp_path: Path, prefix: str, max_entries: int = 1000) -> MeterBuffer:
    return MeterBuffer(tmp_path, prefix, max_entries=max_entries, dedupe_ttl_s=600)


async def test_buffered_usage_is_replayed_once_and_the_file_removed(
    tmp_path: Path, redis_prefix: str, redis_client: redis.Redis, aredis: Redis
) -> None:
    buf = _buffer(tmp_path, redis_prefix)
    tenant = uuid.uuid4()
    # concurrent requests share fsyncs (group commit); each is on disk when append returns
    await asyncio.gather(*(buf.append(buf.success_entry(tenant, "double", 10)) for _ in range(50)))
    await buf.append(buf.failure_entry(tenant, "double"))
    assert buf.unreplayed == 51
    (segment,) = buf.pending_files()
    assert len(segment.read_bytes().splitlines()) == 51
    assert metered(redis_client, redis_prefix, str(tenant)) == {}

    report = await buf.replay(aredis)
    assert (report.files, report.applied, report.skipped_duplicates) == (1, 51, 0)
    assert buf.pending_files() == []
    assert buf.unreplayed == 0
    assert metered(redis_client, redis_prefix, str(tenant)) == {
        ("double", "r"): 50,
        ("double", "g"): 500,
        ("double", "w"): 50,
        ("double", "f"): 1,
    }
    # the month's quota counts the successes (failures use no quota), with the month's expiry
    assert month_hash(redis_client, redis_prefix, str(tenant)) == {"r": 50, "g": 500}
    month = counters.month_of(time.time())
    month_key = counters.month_key(redis_prefix, tenant, month)
    assert redis_client.expiretime(month_key) == counters.month_expiry(month)
    # appends after a replay go to a fresh segment, replayed in turn
    await buf.append(buf.success_entry(tenant, "double", 1))
    assert (await buf.replay(aredis)).applied == 1
    assert metered(redis_client, redis_prefix, str(tenant))[("double", "r")] == 51
    assert month_hash(redis_client, redis_prefix, str(tenant)) == {"r": 51, "g": 501}


async def test_replay_killed_half_way_counts_nothing_twice(
    tmp_path: Path, redis_prefix: str, redis_client: redis.Redis, aredis: Redis
) -> None:
    buf = _buffer(tmp_path, redis_prefix)
    tenant = uuid.uuid4()
    for _ in range(10):
        await buf.append(buf.success_entry(tenant, "m", 7))
    await buf.close(Redis.from_url("redis://127.0.0.1:1/0"))  # Redis unreachable: left sealed
    (segment,) = buf.pending_files()
    # a replay that died after applying the first 4 entries (same script, same ids)
    script = aredis.register_script(REPLAY_SCRIPT)
    lines = segment.read_bytes().splitlines()
    for raw in lines[:4]:
        e = Entry.parse(raw)
        assert e is not None
        keys, args = replay_call(e, 600)
        assert await script(keys=keys, args=args) == 1
    # ... and a crash that cut the last line short (never fsynced: never answered 200)
    with segment.open("ab") as f:
        f.write(lines[0][: len(lines[0]) // 2])

    report = await _buffer(tmp_path, redis_prefix).replay(aredis)
    assert (report.applied, report.skipped_duplicates, report.skipped_corrupt) == (6, 4, 1)
    assert metered(redis_client, redis_prefix, str(tenant)) == {
        ("m", "r"): 10,
        ("m", "g"): 70,
        ("m", "w"): 10,
    }
    assert month_hash(redis_client, redis_prefix, str(tenant)) == {"r": 10, "g": 70}
    assert list(tmp_path.iterdir()) == []


async def test_orphans_of_dead_processes_are_replayed_but_a_live_segment_is_left_alone(
    tmp_path: Path, redis_prefix: str, redis_client: redis.Redis, aredis: Redis
) -> None:
    tenant = uuid.uuid4()
    dead = _buffer(tmp_path, redis_prefix)
    for _ in range(3):
        await dead.append(dead.success_entry(tenant, "m", 1))
    assert dead._active is not None
    dead._active.close()  # the process died: its lock is gone, its active segment stays
    live = _buffer(tmp_path, redis_prefix)
    await live.append(live.success_entry(tenant, "m", 1))
    live_segment = live._active_path
    assert live_segment is not None

    other = _buffer(tmp_path, redis_prefix)  # a third gateway, starting up
    report = await other.replay(aredis)
    assert (report.files, report.applied) == (1, 3)
    assert metered(redis_client, redis_prefix, str(tenant))[("m", "r")] == 3
    assert live.pending_files() == [live_segment]  # still locked by its (live) owner

    # the owner's lock is real (flock)
    with live_segment.open("rb") as f, pytest.raises(BlockingIOError):
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert (await live.replay(aredis)).applied == 1
    assert metered(redis_client, redis_prefix, str(tenant))[("m", "r")] == 4


async def test_a_full_buffer_refuses_with_metering_unavailable(
    tmp_path: Path, redis_prefix: str, aredis: Redis
) -> None:
    buf = _buffer(tmp_path, redis_prefix, max_entries=2)
    tenant = uuid.uuid4()
    await buf.append(buf.success_entry(tenant, "m", 1))
    await buf.append(buf.success_entry(tenant, "m", 1))
    with pytest.raises(errors.MeteringUnavailable) as refused:
        await buf.append(buf.success_entry(tenant, "m", 1))
    assert (refused.value.status, refused.value.code) == (503, "metering_unavailable")
    await buf.replay(aredis)
    await buf.append(buf.success_entry(tenant, "m", 1))  # room again once replayed


async def test_a_buffered_copy_of_a_metering_call_that_ran_is_not_applied_again(
    tmp_path: Path, redis_prefix: str, redis_client: redis.Redis, aredis: Redis
) -> None:
    """The gateway cannot tell a call Redis ran but never answered from one it never ran: it
    buffers a copy carrying the call's mark, and the replay applies only copies of calls that
    never ran."""
    meter = Meter(aredis, redis_prefix)
    buf = _buffer(tmp_path, redis_prefix)
    tenant = uuid.uuid4()
    ran = meter.next_mark(tenant)
    await meter.record_success(tenant, "double", 10, mark=ran)  # ran, but "no reply" came
    never_ran = meter.next_mark(tenant)  # this one failed before reaching Redis
    await buf.append(buf.success_entry(tenant, "double", 10, 1, ran))
    await buf.append(buf.success_entry(tenant, "double", 10, 1, never_ran))
    report = await buf.replay(aredis)
    assert (report.applied, report.skipped_duplicates) == (1, 1)
    assert metered(redis_client, redis_prefix, str(tenant))[("double", "r")] == 2
    assert month_hash(redis_client, redis_prefix, str(tenant)) == {"r": 2, "g": 20}
    # the marks live under the tenant's hash tag, with a TTL
    assert ran.key == never_ran.key
    assert ran.bit + 1 == never_ran.bit
    assert f"{{{tenant}}}" in ran.key
    assert 0 < redis_client.ttl(ran.key) <= 2 * 24 * 3600
