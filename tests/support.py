"""Plain helpers shared by the test fixtures and the benchmarks (no pytest needed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql

PG_ADMIN = os.environ.get("MAAS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


# Test and bench tenants send bursts (1,000 concurrent requests, ~1,000 rps): limits that never
# refuse them, so those runs measure what they are about. Admission still runs on every request.
GENEROUS_LIMITS: dict[str, Any] = {
    "requests_per_second": 1_000_000,
    "burst": 1_000_000,
    "max_concurrency": 100_000,
}


def set_tenant_limits(database_url: str, tenant_id: str, limits: dict[str, Any]) -> None:
    """Overwrite a tenant's limit overrides straight in Postgres (before any gateway caches it;
    ``maas tenants set-limits`` also tells running gateways)."""
    with psycopg.connect(sync_pg_url(database_url), autocommit=True) as conn:
        conn.execute(
            "UPDATE tenants SET limits = %s::jsonb WHERE id = %s", (json.dumps(limits), tenant_id)
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM, wait, then SIGKILL whatever is left of the process group it leads (every process
    started here gets a session of its own, so the group holds only what it started)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def sync_pg_url(async_url: str) -> str:
    """The psycopg form of an asyncpg SQLAlchemy URL."""
    return async_url.replace("postgresql+asyncpg://", "postgresql://")


@contextlib.contextmanager
def scratch_database(name: str, pg_admin: str = PG_ADMIN) -> Iterator[str]:
    """A new database migrated to head, dropped at exit. Yields its SQLAlchemy (asyncpg) URL."""
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        base = pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        url = f"{base}/{name}"
        import migrations

        migrations.upgrade(url)
        yield url
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
