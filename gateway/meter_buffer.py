"""Durable local meter buffer: usage that could not reach Redis, kept on disk until it can.

When the metering round trip fails, the increment is appended as one JSON line to this process's
segment file in ``MAAS_METER_BUFFER_DIR`` and fsynced *before* the caller gets its 200 (several
waiting requests share one fsync). A background task replays segments into Redis once it answers:
``REPLAY_SCRIPT`` adds an entry's fields to the tenant's live hash (and a success's request and
GPU µs to the month's quota hash, as the metering call would have) and records the entry's id
(``SET NX`` with a TTL) in the same atomic step, skipping ids already recorded, so a replay that
dies half-way is simply run again and counts nothing twice. A replayed segment is deleted.

Files: ``meter-<pid>-<random>.active`` is the segment a process appends to; it holds an exclusive
``flock`` on it for as long as it is open. Replay first seals it (rename to ``.sealed``; appends go
to a fresh segment). Any segment whose lock can be taken belongs to nobody alive (or is sealed),
so a starting gateway replays what a crashed one left. A line cut short by a crash was never
fsynced, so its request never got a 200: it is skipped.

Bounded: beyond ``MAAS_METER_BUFFER_MAX_ENTRIES`` unreplayed entries in this process the gateway
refuses with 503 ``metering_unavailable`` instead of serving unmetered.

A metering call that fails *after* Redis executed it (Redis dies between running the script and
replying, or the reply times out) cannot be told from one that never ran. So every metering
call also sets its own bit in a per-process mark bitmap in the same atomic step
(``billing.counters.RECORD_SUCCESS_SCRIPT``), and its buffered copy carries that bit: the replay
applies the copy only if the bit is not set. Counted once either way. (A copy older than the
bitmap's TTL, two days, is applied unchecked.) The metering client never retries, for the same
reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from billing import counters
from gateway import errors
from gateway.metering import Mark

log = logging.getLogger(__name__)

ACTIVE_SUFFIX = ".active"
SEALED_SUFFIX = ".sealed"
_REPLAY_BATCH = 500

# KEYS[1] live hash, KEYS[2] the entry's dedupe key, KEYS[3] the mark bitmap of the metering call
# it copies (or the dedupe key again), KEYS[4] the month's quota hash (or the dedupe key again).
# ARGV: dedupe TTL (s), mark bit (-1: none), month hash expiry (epoch s; 0: no month part), month
# requests, month GPU µs, then field, amount, … Applies the entry unless its id was applied
# before or the call it copies did run; returns 1 if applied, 0 if skipped.
REPLAY_SCRIPT = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return 0 end
if tonumber(ARGV[2]) >= 0 and redis.call('GETBIT', KEYS[3], ARGV[2]) == 1 then return 0 end
for i = 6, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
if tonumber(ARGV[3]) > 0 then
  local r = tonumber(ARGV[4])
  if redis.call('HINCRBY', KEYS[4], 'r', r) == r then redis.call('EXPIREAT', KEYS[4], ARGV[3]) end
  redis.call('HINCRBY', KEYS[4], 'g', ARGV[5])
end
return 1
"""


def outcome_unknown(exc: BaseException) -> bool:
    """False when the command surely never reached Redis (the connection could not be made);
    True when it may have run before the failure (reset or timeout while awaiting the reply)."""
    text = str(exc)
    return not ("connecting to" in text or "Timeout connecting" in text)


def replay_call(entry: Entry, dedupe_ttl_s: int) -> tuple[list[str], list[Any]]:
    """``REPLAY_SCRIPT``'s keys and arguments for one entry."""
    mark_key, bit = (
        (entry.dedupe_key, -1) if entry.mark is None else (entry.mark.key, entry.mark.bit)
    )
    month = entry.month
    month_key, month_args = (
        (entry.dedupe_key, [0, 0, 0])
        if month is None
        else (month.key, [month.expiry, month.requests, month.gpu_us])
    )
    args: list[Any] = [dedupe_ttl_s, bit, *month_args]
    for name, amount in entry.fields.items():
        args += [name, amount]
    return [entry.live_key, entry.dedupe_key, mark_key, month_key], args


def dedupe_key(prefix: str, tenant_id: uuid.UUID | str, entry_id: str) -> str:
    """Under the tenant's hash tag, so the replay script stays on one Cluster slot."""
    return f"{prefix}meter-replayed:{{{tenant_id}}}:{entry_id}"


@dataclass(frozen=True, slots=True)
class MonthPart:
    """What a success adds to the month's quota hash (``billing.counters.month_key``)."""

    key: str
    expiry: int  # epoch s, as ``Meter.record_success`` sets it
    requests: int
    gpu_us: int


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    live_key: str
    dedupe_key: str
    fields: dict[str, int]
    mark: Mark | None = None  # the metering call this copies, when it may have run
    month: MonthPart | None = None  # successes only (failures use no quota)

    def line(self) -> bytes:
        doc: dict[str, Any] = {
            "id": self.id,
            "key": self.live_key,
            "dedupe": self.dedupe_key,
            "f": self.fields,
        }
        if self.mark is not None:
            doc["mark"] = [self.mark.key, self.mark.bit]
        if self.month is not None:
            m = self.month
            doc["month"] = [m.key, m.expiry, m.requests, m.gpu_us]
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> Entry | None:
        try:
            doc = json.loads(raw)
            mark, month = doc.get("mark"), doc.get("month")
            return cls(
                str(doc["id"]),
                str(doc["key"]),
                str(doc["dedupe"]),
                {str(k): int(v) for k, v in doc["f"].items()},
                None if mark is None else Mark(str(mark[0]), int(mark[1])),
                None
                if month is None
                else MonthPart(str(month[0]), int(month[1]), int(month[2]), int(month[3])),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(slots=True)
class ReplayReport:
    files: int = 0
    applied: int = 0
    skipped_duplicates: int = 0
    skipped_corrupt: int = 0


def _try_lock(handle: IO[bytes]) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class MeterBuffer:
    def __init__(
        self, directory: Path, prefix: str, *, max_entries: int, dedupe_ttl_s: int
    ) -> None:
        self.directory = directory
        self._prefix = prefix
        self._max_entries = max_entries
        self._dedupe_ttl_s = dedupe_ttl_s
        self._stem = f"meter-{os.getpid()}-{secrets.token_hex(4)}"
        self._segment = 0
        self._active: IO[bytes] | None = None
        self._active_path: Path | None = None
        self._waiting: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._file_lock = asyncio.Lock()  # a write+fsync batch, or sealing, at a time
        self._replay_lock = asyncio.Lock()
        self.unreplayed = 0  # entries of this process not yet replayed (the bound)
        self.usable = True
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("meter buffer directory %s unusable (%s): no Redis, 503", directory, exc)
            self.usable = False

    # --- appending (request path, only while Redis is away) ------------------------------------

    def success_entry(
        self,
        tenant_id: uuid.UUID,
        model: str,
        gpu_us: int,
        work: int = 1,
        mark: Mark | None = None,
    ) -> Entry:
        """The increments ``Meter.record_success`` makes: the usage fields and the month's quota
        totals (so a month's cap counts what was served while Redis was away, once it is back);
        ``mark``: that call's mark."""
        moment = time.time()
        bucket, month = counters.bucket_of(moment), counters.month_of(moment)
        return self._entry(
            tenant_id,
            {
                counters.field(bucket, model, counters.REQUESTS): 1,
                counters.field(bucket, model, counters.GPU_US): gpu_us,
                counters.field(bucket, model, counters.WORK): work,
            },
            mark,
            MonthPart(
                counters.month_key(self._prefix, tenant_id, month),
                counters.month_expiry(month),
                1,
                gpu_us,
            ),
        )

    def failure_entry(self, tenant_id: uuid.UUID, model: str) -> Entry:
        bucket = counters.bucket_of(time.time())
        return self._entry(tenant_id, {counters.field(bucket, model, counters.FAILURES): 1})

    def _entry(
        self,
        tenant_id: uuid.UUID,
        fields: dict[str, int],
        mark: Mark | None = None,
        month: MonthPart | None = None,
    ) -> Entry:
        entry_id = uuid.uuid4().hex
        return Entry(
            entry_id,
            counters.live_key(self._prefix, tenant_id),
            dedupe_key(self._prefix, tenant_id, entry_id),
            fields,
            mark,
            month,
        )

    async def append(self, entry: Entry) -> None:
        """Returns once the entry is on disk (fsynced); ``MeteringUnavailable`` if it cannot be."""
        if not self.usable or self.unreplayed + len(self._waiting) >= self._max_entries:
            raise errors.MeteringUnavailable("usage metering is unavailable; retry shortly")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry.line(), done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(done)  # a cancelled caller must not cancel the others' fsync

    async def _flush(self) -> None:
        # Group commit: whoever queued while a batch was being synced goes in the next one.
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                async with self._file_lock:
                    await asyncio.to_thread(self._write, [line for line, _ in batch])
            except Exception as exc:
                log.error("meter buffer write failed: %s", exc)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(
                            errors.MeteringUnavailable("usage metering is unavailable")
                        )
                continue
            self.unreplayed += len(batch)
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    def _write(self, lines: list[bytes]) -> None:
        if self._active is None:
            self._segment += 1
            path = self.directory / f"{self._stem}-{self._segment}{ACTIVE_SUFFIX}"
            handle = path.open("ab")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            self._active, self._active_path = handle, path
        self._active.write(b"".join(lines))
        self._active.flush()
        os.fdatasync(self._active.fileno())

    # --- replay (background) -------------------------------------------------------------------

    async def _seal(self) -> None:
        async with self._file_lock:
            handle, path = self._active, self._active_path
            if handle is None or path is None:
                return
            self._active = self._active_path = None
            # Renamed while still locked: nobody can pick it up half-renamed.
            path.rename(path.with_suffix(SEALED_SUFFIX))
            handle.close()

    def pending_files(self) -> list[Path]:
        if not self.usable:
            return []
        return sorted(
            p
            for p in self.directory.iterdir()
            if p.name.startswith("meter-") and p.suffix in (ACTIVE_SUFFIX, SEALED_SUFFIX)
        )

    async def replay(self, redis: Redis) -> ReplayReport:
        """Replay every segment nobody holds (this process's, sealed first, and orphans).

        Raises ``RedisError`` if Redis fails half-way: what was applied is recorded, the rest
        is replayed by the next call.
        """
        report = ReplayReport()
        async with self._replay_lock:
            await self._seal()
            script = redis.register_script(REPLAY_SCRIPT)
            for path in self.pending_files():
                try:
                    handle = path.open("rb")
                except FileNotFoundError:  # another process finished it
                    continue
                with handle:
                    if not _try_lock(handle):
                        continue  # a live process's active segment, or another replay
                    if not path.exists():
                        continue  # replayed and deleted by the process we waited on
                    entries, corrupt = self._read(handle)
                    report.skipped_corrupt += corrupt
                    applied = await self._apply(script, entries)
                    report.applied += applied
                    report.skipped_duplicates += len(entries) - applied
                    report.files += 1
                    path.unlink()
                    if path.name.startswith(self._stem):
                        self.unreplayed = max(0, self.unreplayed - len(entries))
        if report.files:
            log.warning(
                "meter buffer replayed: %d file(s), %d entries applied, %d already applied",
                report.files,
                report.applied,
                report.skipped_duplicates,
            )
        return report

    @staticmethod
    def _read(handle: IO[bytes]) -> tuple[list[Entry], int]:
        entries, corrupt = [], 0
        for raw in handle.read().splitlines():
            if not raw.strip():
                continue
            entry = Entry.parse(raw)
            if entry is None:
                corrupt += 1  # a line cut short by a crash: never fsynced, never answered 200
            else:
                entries.append(entry)
        return entries, corrupt

    async def _apply(self, script: Any, entries: Iterable[Entry]) -> int:
        applied = 0
        batch: list[Entry] = []

        async def send() -> int:
            pipe = script.registered_client.pipeline(transaction=False)
            for e in batch:
                keys, args = replay_call(e, self._dedupe_ttl_s)
                await script(keys=keys, args=args, client=pipe)
            return sum(int(r) for r in await pipe.execute())

        for entry in entries:
            batch.append(entry)
            if len(batch) >= _REPLAY_BATCH:
                applied += await send()
                batch = []
        if batch:
            applied += await send()
        return applied

    async def run_replays(self, redis: Redis, interval_s: float) -> None:
        """Background task: replay whenever something waits and Redis answers."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self.pending_files() and await redis.ping():
                    await self.replay(redis)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.debug("meter buffer replay waits for Redis: %s", exc)

    async def close(self, redis: Redis) -> None:
        """On shutdown: replay what can be, else leave it sealed on disk for the next process."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        try:
            if self.pending_files():
                await self.replay(redis)
        except (RedisError, OSError) as exc:
            log.warning("meter buffer left on disk for the next gateway: %s", exc)
        await self._seal()
