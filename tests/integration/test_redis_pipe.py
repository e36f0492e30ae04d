"""The hot path's pipelined Redis client against real Redis servers: the shared one for replies
and pipelining, one of the test's own for the failures (paused, killed, restarted)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from redis import exceptions as rx

from gateway.meter_buffer import outcome_unknown
from gateway.redis_pipe import PipelinedRedis, encode_command, supports
from tests.conftest import REDIS_URL
from tests.faults import RedisServer
from tests.support import free_port

pytestmark = pytest.mark.timeout(120)


class CountingTransport:
    """Counts the client's ``write`` calls (each is one system call)."""

    def __init__(self, client: PipelinedRedis) -> None:
        proto = client._proto
        assert proto is not None
        assert proto.transport is not None
        self.real = proto.transport
        self.writes = 0
        proto.transport = self  # type: ignore[assignment]

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.real.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


def pause(server: RedisServer, ms: int) -> None:
    """The server answers no client for ``ms`` milliseconds (its commands wait, unrun)."""
    with server.client() as admin:
        admin.execute_command("CLIENT", "PAUSE", str(ms), "ALL")


def test_commands_are_encoded_as_resp_arrays_of_bulk_strings() -> None:
    assert encode_command(["SET", "k", b"v\r\n", 42, 1.5]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n42\r\n$3\r\n1.5\r\n"
    )
    assert supports("redis://127.0.0.1:6379/0")
    assert supports("unix:///run/redis.sock")
    assert not supports("rediss://example:6380")
    with pytest.raises(ValueError, match="unsupported"):
        PipelinedRedis("rediss://127.0.0.1:6380", timeout_s=1)


async def test_concurrent_commands_share_writes_and_each_gets_its_own_reply(
    redis_prefix: str, redis_client: redis.Redis
) -> None:
    client = PipelinedRedis(REDIS_URL, timeout_s=2)
    key = f"{redis_prefix}pipe:counter"
    try:
        assert await client.execute_command("PING") == b"PONG"
        counting = CountingTransport(client)
        replies = await asyncio.gather(*(client.hincrby(key, f"f{i % 7}", i) for i in range(500)))
        # every caller got the reply to its own command: per field, a running sum in send order
        running: dict[int, int] = {}
        for i, reply in enumerate(replies):
            running[i % 7] = running.get(i % 7, 0) + i
            assert reply == running[i % 7]
        assert counting.writes < 10  # 500 commands issued in one loop step leave together
        stored = redis_client.hgetall(key)
        assert {k: int(v) for k, v in stored.items()} == {f"f{f}": s for f, s in running.items()}
    finally:
        await client.aclose()
        redis_client.delete(key)


async def test_scripts_run_by_sha_after_a_first_eval_and_errors_keep_the_connection(
    own_redis: RedisServer,
) -> None:
    client = PipelinedRedis(own_redis.url, timeout_s=2)
    script = client.register_script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
    failing = client.register_script("return redis.call('INCR', KEYS[1])")
    try:
        with own_redis.client() as plain:
            assert plain.script_exists(script.sha) == [False]
            assert await script(keys=["k"], args=["v", 41]) == [b"k", b"v", 42]  # NOSCRIPT, EVAL
            assert plain.script_exists(script.sha) == [True]
            plain.set("text", "not a number")
        assert await script(keys=["k2"], args=["w", 1]) == [b"k2", b"w", 2]  # EVALSHA
        with pytest.raises(rx.ResponseError, match="not an integer"):
            await failing(keys=["text"])
        with pytest.raises(rx.ResponseError, match="unknown command"):
            await client.execute_command("NO-SUCH-COMMAND")
        assert await client.zrem("missing", "member") == 0  # the same connection still works
    finally:
        await client.aclose()


async def test_a_started_script_is_sent_before_the_caller_awaits_it(
    redis_prefix: str, redis_client: redis.Redis
) -> None:
    """Calling a script writes it at once: Redis runs it while the caller works on."""
    client = PipelinedRedis(REDIS_URL, timeout_s=2)
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    key = f"{redis_prefix}pipe:started"
    try:
        not_connected = script([key])  # no connection yet: sent when awaited
        time.sleep(0.05)
        assert redis_client.get(key) is None
        assert await not_connected == 1  # NOSCRIPT, then EVAL
        started = script([key])
        # the event loop is blocked here: only a write made inside the call can have reached Redis
        time.sleep(0.05)
        assert redis_client.get(key) == "2"
        assert await started == 2
    finally:
        await client.aclose()
        redis_client.delete(key)


async def test_url_selects_the_database() -> None:
    port_url = REDIS_URL.rsplit("/", 1)[0]
    client = PipelinedRedis(f"{port_url}/5", timeout_s=2)
    key = f"maas-test-pipe-db-{time.time_ns()}"
    try:
        await client.execute_command("SET", key, "in five", "EX", 60)
        with redis.Redis.from_url(f"{port_url}/5", decode_responses=True) as db5:
            assert db5.get(key) == "in five"
        with redis.Redis.from_url(f"{port_url}/0", decode_responses=True) as db0:
            assert db0.get(key) is None
    finally:
        await client.aclose()


async def test_nothing_listening_fails_fast_as_surely_not_sent() -> None:
    client = PipelinedRedis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1)
    started = time.monotonic()
    with pytest.raises(rx.ConnectionError) as caught:
        await client.execute_command("PING")
    assert time.monotonic() - started < 1
    assert not outcome_unknown(caught.value)  # the metering buffer may apply its copy unchecked


async def test_a_late_reply_times_out_every_waiting_command_and_the_next_one_reconnects(
    own_redis: RedisServer,
) -> None:
    client = PipelinedRedis(own_redis.url, timeout_s=0.3)
    try:
        assert await client.execute_command("SET", "before", "1") == b"OK"
        pause(own_redis, 1500)
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.execute_command("INCR", "paused") for _ in range(5)),
            return_exceptions=True,
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(r, rx.TimeoutError) for r in results), results
        assert all(outcome_unknown(r) for r in results if isinstance(r, BaseException))
        assert 0.25 < elapsed < 1.0
        await asyncio.sleep(1.5)  # the pause ends; the paused INCRs may have run then
        assert await client.execute_command("GET", "before") == b"1"
    finally:
        await client.aclose()


async def test_redis_killed_mid_command_fails_it_as_maybe_run_then_a_restart_is_picked_up(
    own_redis: RedisServer,
) -> None:
    client = PipelinedRedis(own_redis.url, timeout_s=5)
    try:
        assert await client.execute_command("SET", "k", "v") == b"OK"
        pause(own_redis, 3000)
        waiting = asyncio.ensure_future(client.execute_command("GET", "k"))
        await asyncio.sleep(0.2)
        own_redis.kill()
        with pytest.raises(rx.ConnectionError) as caught:
            await waiting
        assert outcome_unknown(caught.value)
        with pytest.raises(rx.ConnectionError) as refused:
            await client.execute_command("GET", "k")
        assert not outcome_unknown(refused.value)
        own_redis.start()  # same port; the AOF kept the key
        assert await client.execute_command("GET", "k") == b"v"
    finally:
        await client.aclose()


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(
    own_redis: RedisServer,
) -> None:
    client = PipelinedRedis(own_redis.url, timeout_s=5)
    try:
        await client.execute_command("SET", "a", "1")
        await client.execute_command("SET", "b", "2")
        pause(own_redis, 300)
        first = asyncio.ensure_future(client.execute_command("GET", "a"))
        second = asyncio.ensure_future(client.execute_command("GET", "b"))
        await asyncio.sleep(0.05)
        first.cancel()
        assert await second == b"2"
        assert await client.execute_command("GET", "a") == b"1"
    finally:
        await client.aclose()
