"""Typed configuration, read from ``MAAS_*`` environment variables (and ``.env``).

This is the shared kernel's settings object: it lives in the lowest layer (tenants) so that
billing and gateway can read it without importing upward.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # Local-demo defaults only; production sets these from its secret store.
    secret_key: str = "dev-insecure-secret-change-me"  # noqa: S105
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

    # How long a resolved API key stays cached in a gateway process.
    principal_cache_ttl_s: float = Field(default=5.0, ge=0)

    # Web console sessions: ended after this long without a request (idle), and at the latest
    # this long after login (absolute), whichever comes first.
    console_session_idle_s: int = Field(default=3600, ge=1)
    console_session_max_s: int = Field(default=12 * 3600, ge=1)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
