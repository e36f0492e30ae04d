"""The operator CLI: JSON shapes scripts rely on, clear failures with non-zero exits."""

from __future__ import annotations

import json
import uuid

from tests.conftest import Cli, free_port


def test_default_plans_exist_after_upgrade(cli: Cli) -> None:
    plans = {p["code"]: p for p in cli.json("plans", "list")}
    assert plans["standard"]["sla_target_percent"] == "99.5"
    assert plans["premium"]["sla_target_percent"] == "99.9"
    for p in plans.values():
        assert p["base_fee_cents"] > 0
        assert float(p["price_per_1k_requests_cents"]) > 0
        assert float(p["price_per_gpu_hour_cents"]) > 0
        assert p["credit_schedule"]


def test_tenant_and_key_json_shapes(cli: Cli) -> None:
    name = f"shape-{uuid.uuid4().hex[:6]}"
    tenant = cli.json("tenants", "create", name, "--plan", "premium")
    assert set(tenant) >= {"id", "name", "plan"}
    assert tenant["name"] == name
    assert tenant["plan"] == "premium"
    key = cli.json("keys", "create", name, "--name", "ci")
    assert set(key) >= {"id", "tenant", "name", "prefix", "secret"}
    assert key["tenant"] == tenant["id"]
    assert key["secret"].startswith(f"mk_live_{key['prefix']}_")
    listed = {t["name"]: t for t in cli.json("tenants", "list")}
    assert listed[name]["plan"] == "premium"
    # keys can be created by tenant id too, and revoked by id (idempotently)
    key2 = cli.json("keys", "create", tenant["id"])
    assert key2["tenant"] == tenant["id"]
    assert cli.json("keys", "revoke", key2["id"])["prefix"] == key2["prefix"]
    assert cli.json("keys", "revoke", key2["prefix"])["id"] == key2["id"]


def test_human_output_prints_the_secret_once(cli: Cli) -> None:
    name = f"human-{uuid.uuid4().hex[:6]}"
    cli.json("tenants", "create", name, "--plan", "standard")
    out = cli.run("keys", "create", name)
    assert out.returncode == 0
    assert out.stdout.count("mk_live_") == 1


def test_bad_input_fails_clearly(cli: Cli) -> None:
    name = f"dup-{uuid.uuid4().hex[:6]}"
    cli.json("tenants", "create", name, "--plan", "standard")
    cases = [
        (("tenants", "create", name, "--plan", "standard"), "tenant_exists"),
        (("tenants", "create", "x" + name, "--plan", "gold"), "plan_not_found"),
        (("keys", "create", "no-such-tenant"), "tenant_not_found"),
        (("keys", "revoke", str(uuid.uuid4())), "api_key_not_found"),
        (("keys", "create", name, "--expires", "tomorrow"), "invalid_input"),
        (("models", "publish", "m", "--gpu-share", "1.5"), "invalid_input"),
        (("models", "grant", "never_published", name), "model_not_found"),
    ]
    for args, code in cases:
        result = cli.run(*args, "--json")
        assert result.returncode == 1, args
        assert json.loads(result.stderr)["code"] == code, args
        human = cli.run(*args)
        assert human.returncode == 1
        assert "error:" in human.stderr


def test_database_unreachable_is_a_clear_error(cli: Cli) -> None:
    env = dict(
        cli.env, MAAS_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x"
    )
    for args in (("tenants", "list"), ("plans", "list", "--json"), ("db", "upgrade")):
        result = cli.run(*args, env=env)
        assert result.returncode == 1, result
        assert "database unreachable" in result.stderr
        assert "Traceback" not in result.stderr
