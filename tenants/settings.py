"""Typed configuration, read from ``MAAS_*`` environment variables (and ``.env``).

This is the shared kernel's settings object: it lives in the lowest layer (tenants) so that
billing and gateway can read it without importing upward.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_KEY = "dev-insecure-secret-change-me"  # noqa: S105
MIN_SECRET_KEY_LENGTH = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAAS_", env_file=".env", extra="ignore")

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/maas"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis key the platform writes starts with this (a test run gets its own).
    redis_prefix: str = "maas:"
    triton_url: str = "127.0.0.1:8001"
    # Token PyTriton/Triton demands for restricted gRPC protocols (statistics, model repository).
    triton_access_token: str | None = None
    triton_timeout_s: float = Field(default=30.0, gt=0)
    # Triton gRPC endpoints (host:port, comma-separated) whose statistics the rollup reconciles
    # GPU time with; empty: triton_url. gpu_reconcile=false bills the estimate everywhere.
    triton_stats_urls: str = ""
    gpu_reconcile: bool = True
    # Local-demo defaults only; production sets these from its secret store. ``maas serve``
    # refuses the built-in secret key unless allow_insecure_secret_key is set (development).
    secret_key: str = DEV_SECRET_KEY
    allow_insecure_secret_key: bool = False
    stripe_api_key: str = "sk_test_local"
    stripe_api_base: str | None = None
    stripe_webhook_secret: str = "whsec_local"  # noqa: S105
    otlp_endpoint: str | None = None

    # Dynamic trace sampling (DESIGN.md section 5); per gateway process.
    trace_budget_per_key: float = Field(default=10.0, gt=0)
    trace_global_ceiling: float = Field(default=100.0, gt=0)
    trace_slow_threshold_s: float = Field(default=1.0, gt=0)
    trace_respect_parent_sampled: bool = False
    log_json: bool = False
    log_level: str = "INFO"

    # HTTP limits
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_tensor_elements: int = Field(default=16_000_000, gt=0)
    max_json_depth: int = Field(default=64, gt=0)
    max_header_bytes: int = Field(default=16 * 1024, gt=0)  # all names and values together

    # How long a resolved API key stays cached in a gateway process.
    principal_cache_ttl_s: float = Field(default=5.0, ge=0)
    # Postgres unreachable: a cached principal is still served up to this age, then 503.
    principal_max_stale_s: float = Field(default=300.0, ge=0)
    # ... and only up to this age while the revocation listener is also cut off from Redis
    # (a revocation published meanwhile would go unheard).
    principal_max_stale_unlistened_s: float = Field(default=30.0, ge=0)

    # Fault tolerance (issue #7). Redis away: increments go to an append-only file per process
    # in this directory (fsynced before the 200), replayed into Redis exactly once later.
    meter_buffer_dir: Path = Field(default_factory=lambda: _state_dir() / "meter-buffer")
    # Unreplayed entries a process may hold; beyond it the gateway answers 503.
    meter_buffer_max_entries: int = Field(default=100_000, ge=0)
    meter_replay_interval_s: float = Field(default=1.0, gt=0)
    # How long Redis remembers a replayed entry's id (longer than any buffer can wait).
    meter_replay_dedupe_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    # Socket timeout of the metering round trip: past it the increment is buffered.
    meter_redis_timeout_s: float = Field(default=1.0, gt=0)
    # Circuit breaker per model: opens after this many consecutive UNAVAILABLE/DEADLINE
    # failures, fails fast for the cool-down, then lets one probe through.
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=5.0, gt=0)
    # uvicorn's grace for in-flight requests on SIGTERM.
    shutdown_grace_s: float = Field(default=30.0, gt=0)

    # How long a concurrency slot outlives a gateway that died holding it (beyond the Triton
    # deadline, which bounds every request that is still being served).
    admission_lease_margin_s: float = Field(default=15.0, gt=0)
    # Redis unreachable at admission: each process enforces the rate limits on its own for at
    # most this long since its last good admission round trip (no concurrency cap or quota
    # meanwhile), then answers 503 ``admission_unavailable``.
    admission_degraded_max_s: float = Field(default=300.0, ge=0)

    # Web console sessions: ended after this long without a request (idle), and at the latest
    # this long after login (absolute), whichever comes first.
    console_session_idle_s: int = Field(default=3600, ge=1)
    console_session_max_s: int = Field(default=12 * 3600, ge=1)

    @property
    def stats_endpoints(self) -> list[str]:
        listed = [u.strip() for u in self.triton_stats_urls.split(",") if u.strip()]
        return listed or [self.triton_url]

    def secret_key_problem(self) -> str | None:
        """Why ``secret_key`` must not protect real API keys, or None when it may."""
        if self.secret_key == DEV_SECRET_KEY:
            return "MAAS_SECRET_KEY is not set (the built-in development value is in use)"
        if len(self.secret_key) < MIN_SECRET_KEY_LENGTH:
            return f"MAAS_SECRET_KEY is shorter than {MIN_SECRET_KEY_LENGTH} characters"
        return None


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "maas"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
