"""Test fixtures: a database and a Redis key prefix of this run's own, a real Triton started by
PyTriton with the test models, and real gateway processes (``maas serve``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tenants.settings import Settings
from tests.faults import RedisServer
from tests.support import (
    GENEROUS_LIMITS,
    PG_ADMIN,
    free_port,
    scratch_database,
    set_tenant_limits,
    stop_process,
    sync_pg_url,
    wait_until,
)

__all__ = ["free_port", "stop_process", "sync_pg_url"]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("MAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]
TRITON_TOKEN = f"test-token-{RUN_ID}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with scratch_database(f"maas_test_{RUN_ID}", PG_ADMIN) as url:
        yield url


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    prefix = f"maas-test-{RUN_ID}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of the test's own, to kill, pause and restart (``tests.faults``)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


def app_settings(env: dict[str, str], **overrides: Any) -> Settings:
    """Settings for an in-process app from a test environment's ``MAAS_*`` variables."""
    fields: dict[str, Any] = {
        k.removeprefix("MAAS_").lower(): v for k, v in env.items() if k.startswith("MAAS_")
    }
    return Settings(_env_file=None, **(fields | overrides))


@dataclass
class TritonServer:
    grpc_url: str
    http_port: int
    access_token: str
    process: subprocess.Popen[bytes]


def launch_triton(
    log_path: Path,
    timeout_s: float,
    ports: tuple[int, int, int] | None = None,
    token: str = TRITON_TOKEN,
) -> TritonServer | None:
    """One attempt to start Triton with the test models on ``ports`` (gRPC, HTTP, metrics;
    fresh ones by default): the server once it says READY, None if it died or stalled."""
    grpc_port, http_port, metrics_port = ports or (free_port(), free_port(), free_port())
    # Triton logs a lot on stdout: it goes to a file (a pipe nobody drains would block it).
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.triton_models",
                f"--grpc-port={grpc_port}",
                f"--http-port={http_port}",
                f"--metrics-port={metrics_port}",
                f"--access-token={token}",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if "\nREADY " in "\n" + log_path.read_text(errors="replace"):
            return TritonServer(f"127.0.0.1:{grpc_port}", http_port, token, proc)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return None


def start_triton(log_path: Path, attempts: int = 3) -> TritonServer:
    for attempt in range(1, attempts + 1):
        server = launch_triton(log_path.with_suffix(f".{attempt}.log"), timeout_s=150)
        if server is not None:
            return server
    tail = log_path.with_suffix(f".{attempts}.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"Triton did not start after {attempts} attempts:\n{tail}")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = ROOT / "artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def triton(artifacts: Path) -> Iterator[TritonServer]:
    server = start_triton(artifacts / "triton.log")
    yield server
    stop_process(server.process)


STRIPE_WEBHOOK_SECRET = f"whsec_test_{RUN_ID}"


@dataclass
class StripeServer:
    url: str
    process: subprocess.Popen[str]

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/_test/state", timeout=10).json()
        return result

    def control(self, path: str, body: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/_test/{path}", json=body, timeout=10).raise_for_status()


@pytest.fixture(scope="session")
def stripe_server(artifacts: Path) -> Iterator[StripeServer]:
    log = (artifacts / "stripe-server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.stripe_server",
            "--port",
            "0",
            "--webhook-secret",
            STRIPE_WEBHOOK_SECRET,
            "--quiet",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY"), line
    yield StripeServer(f"http://127.0.0.1:{line.split()[1]}", proc)
    stop_process(proc)


@pytest.fixture(scope="session")
def base_env(
    database_url: str, redis_prefix: str, triton: TritonServer, stripe_server: StripeServer
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.update(
        MAAS_DATABASE_URL=database_url,
        MAAS_REDIS_URL=REDIS_URL,
        MAAS_REDIS_PREFIX=redis_prefix,
        MAAS_TRITON_URL=triton.grpc_url,
        MAAS_TRITON_ACCESS_TOKEN=triton.access_token,
        MAAS_SECRET_KEY=f"test-secret-{RUN_ID}",
        MAAS_TRITON_TIMEOUT_S="10",
        MAAS_STRIPE_API_KEY="sk_test_maas",
        MAAS_STRIPE_API_BASE=stripe_server.url,
        MAAS_STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET,
        MAAS_METER_BUFFER_DIR=str(ROOT / "artifacts" / f"meter-buffer-{RUN_ID}"),
    )
    return env


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "maas"), *args],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture(scope="session")
def cli(base_env: dict[str, str]) -> Cli:
    return Cli(base_env)


@pytest.fixture(scope="session")
def published_models(cli: Cli) -> list[str]:
    names = ["all_types", "echo_params", "double", "slow", "fail"]
    for name in names:
        cli.json("models", "publish", name, "--gpu-share", "0.5" if name == "double" else "1")
    return names


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]


def start_gateway(env: dict[str, str], log_path: Path, *, workers: int = 1) -> Gateway:
    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen(
        [str(BIN / "maas"), "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited; see {log_path}")
        try:
            return httpx.get(f"{url}/v2/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 120, "gateway")
    except BaseException:
        stop_process(proc)  # never leave a half-started gateway behind
        raise
    return Gateway(url, proc)


@pytest.fixture(scope="session")
def gateway(
    base_env: dict[str, str], artifacts: Path, published_models: list[str]
) -> Iterator[Gateway]:
    gw = start_gateway(base_env, artifacts / "gateway.log")
    yield gw
    stop_process(gw.process)


@dataclass
class TenantKey:
    tenant_id: str
    tenant: str
    key_id: str
    prefix: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


@pytest.fixture(scope="session")
def make_tenant(cli: Cli, database_url: str) -> Callable[..., TenantKey]:
    def make(
        plan: str = "standard",
        name: str | None = None,
        limits: dict[str, Any] | None = GENEROUS_LIMITS,
    ) -> TenantKey:
        """A tenant with one key; ``limits`` overrides the plan's (``None``: the plan's own)."""
        name = name or f"t-{uuid.uuid4().hex[:8]}"
        tenant = cli.json("tenants", "create", name, "--plan", plan)
        if limits is not None:
            set_tenant_limits(database_url, tenant["id"], limits)
        key = cli.json("keys", "create", name, "--name", "test")
        return TenantKey(tenant["id"], name, key["id"], key["prefix"], key["secret"])

    return make
