"""The console Overview shows this month's rate-limit refusals and the quota (used / cap)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.conftest import Cli, Gateway, TenantKey
from tests.console.conftest import ConsoleUser, login

GOOD = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}


def infer(gateway: Gateway, t: TenantKey) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v2/models/double/infer", headers=t.headers, json=GOOD, timeout=30
    )


def test_overview_shows_refusals_this_month_and_the_quota_used_of_its_cap(
    gateway: Gateway,
    cli: Cli,
    make_tenant: Callable[..., TenantKey],
    make_console_user: Callable[..., ConsoleUser],
    new_page: Callable[[], Page],
    screenshots: Path,
) -> None:
    t = make_tenant(limits=None)
    page = new_page()
    login(page, gateway, make_console_user(tenant=t.tenant))
    # Plan limits only, no quota: refusals are 0 and no quota tile is shown.
    expect(page.get_by_test_id("refusals")).to_have_text("0")
    expect(page.get_by_test_id("quota")).to_have_count(0)

    cli.json("tenants", "set-limits", t.tenant, "--rpm", "3", "--monthly-requests", "4")
    codes = [infer(gateway, t).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    page.reload()
    expect(page.get_by_test_id("refusals")).to_have_text("2")
    expect(page.get_by_test_id("refused-rate")).to_have_text("2")
    expect(page.get_by_test_id("refused-quota")).to_have_text("0")
    expect(page.get_by_test_id("quota-used")).to_have_text("3")
    expect(page.get_by_test_id("quota-cap")).to_have_text("4")
    page.screenshot(path=str(screenshots / "20-overview-limits.png"), full_page=True)
