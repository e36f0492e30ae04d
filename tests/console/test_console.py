"""The tenant admin web console in a real headless Chromium against a real gateway process."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from playwright.sync_api import Page, expect
from redis.asyncio import Redis

from gateway.metering import Meter
from tests.conftest import REDIS_URL, Cli, Gateway, TenantKey
from tests.console.conftest import SHORT_IDLE_S, SHORT_MAX_S, ConsoleUser, login
from tests.support import sync_pg_url

GOOD = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
NewPage = Callable[[], Page]
NewPageWith = Callable[..., Page]
MakeUser = Callable[..., ConsoleUser]
MakeTenant = Callable[..., TenantKey]


def infer(gateway: Gateway, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v2/models/double/infer", headers=headers, json=GOOD)


def money(cents: int) -> str:
    return f"{'-' if cents < 0 else ''}${abs(cents) / 100:,.2f}"


def cents(text: str) -> int:
    """ "$1,234.56" -> 123456"""
    sign = -1 if text.startswith("-") else 1
    return sign * int(text.lstrip("-$").replace(",", "").replace(".", ""))


def next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def shot(page: Page, screenshots: Path, name: str) -> None:
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)


def table_rows(page: Page, table_id: str) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        f"#{table_id} tbody tr",
        "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText.trim()))",
    )
    return rows


def test_login_refuses_wrong_password_csrf_less_posts_and_locks_out(
    gateway: Gateway,
    make_tenant: MakeTenant,
    make_console_user: MakeUser,
    new_page: NewPage,
    screenshots: Path,
) -> None:
    t = make_tenant()
    user = make_console_user(tenant=t.tenant)
    page = new_page()

    # Without a session every page sends the browser to the login form.
    page.goto(f"{gateway.url}/console/keys")
    assert page.url.endswith("/console/login")

    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill("wrong password, clearly")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Email or password is incorrect.")
    shot(page, screenshots, "01-login-refused")

    # A form post without the CSRF token (e.g. from another site) is refused.
    r = httpx.post(
        f"{gateway.url}/console/login",
        data={"email": user.email, "password": user.password},
        follow_redirects=False,
    )
    assert r.status_code == 403
    assert "maas_console_session" not in r.headers.get("set-cookie", "")

    login(page, gateway, user)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Overview")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["maas_console_session"]["httpOnly"]

    # A logged-in session still needs the token for state changes.
    r = httpx.post(
        f"{gateway.url}/console/keys",
        data={"name": "sneaky"},
        cookies={"maas_console_session": cookies["maas_console_session"]["value"]},
    )
    assert r.status_code == 403

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/console/login")
    page.goto(f"{gateway.url}/console/")
    assert page.url.endswith("/console/login")

    # Five failures lock the e-mail: even the right password is refused for a while.
    for _ in range(5):
        page.get_by_label("Email").fill(user.email)
        page.get_by_label("Password").fill("nope nope nope")
        page.get_by_role("button", name="Log in").click()
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(user.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Too many failed attempts")
    assert page.url.endswith("/console/login")


def test_usage_matches_traffic_sent_through_the_gateway(
    gateway: Gateway,
    cli: Cli,
    database_url: str,
    make_tenant: MakeTenant,
    make_console_user: MakeUser,
    new_page: NewPage,
    screenshots: Path,
) -> None:
    t = make_tenant()
    for _ in range(7):
        assert infer(gateway, t.headers).status_code == 200
    api: dict[str, Any] = httpx.get(
        f"{gateway.url}/v1/usage", params={"granularity": "day"}, headers=t.headers
    ).json()
    assert api["totals"]["requests"] == 7

    # Subscribed since before this month: the bill carries the whole base fee and the
    # projection extrapolates from the month's start.
    now = datetime.now(UTC)
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    with psycopg.connect(sync_pg_url(database_url)) as conn:
        conn.execute(
            "update subscriptions set starts_at = %s where tenant_id = %s",
            (month_start - timedelta(days=40), uuid.UUID(t.tenant_id)),
        )
    # The bill so far equals the month's invoice preview once everything is rolled up.
    cli.json("usage", "rollup")
    period = now.strftime("%Y-%m")
    preview = cli.json("billing", "close", period, "--dry-run")
    mine = [i for i in preview["invoices"] if i["tenant"]["id"] == t.tenant_id]
    assert len(mine) == 1
    assert any(line["kind"] == "requests" and line["quantity"] == 7 for line in mine[0]["lines"])
    # The rollup reconciled GPU time with Triton's statistics: from now on both the API and the
    # console show the attributed figure instead of the provisional estimate.
    api = httpx.get(
        f"{gateway.url}/v1/usage", params={"granularity": "day"}, headers=t.headers
    ).json()
    assert api["totals"]["requests"] == 7

    page = new_page()
    login(page, gateway, make_console_user(tenant=t.tenant))
    expect(page.get_by_test_id("requests")).to_have_text("7")
    expect(page.get_by_test_id("plan")).to_have_text("Standard", ignore_case=True)
    expect(page.get_by_test_id("bill-so-far")).to_have_text(money(mine[0]["total_cents"]))
    if datetime.now(UTC) - month_start > timedelta(hours=1):
        # At least the bill so far (usage only grows when extrapolated, no credit is due).
        projected = page.get_by_test_id("projection").inner_text()
        assert cents(projected) >= mine[0]["total_cents"], projected
    expect(page.get_by_test_id("sla-target")).to_have_text("99.5%")
    shot(page, screenshots, "02-overview")
    # HTMX refreshes the figures by fetching just the fragment.
    fragment = page.request.get(f"{gateway.url}/console/", headers={"HX-Request": "true"})
    assert fragment.status == 200
    body = fragment.text()
    assert 'id="overview-tiles"' in body
    assert "<html" not in body
    assert 'data-testid="requests">7<' in body

    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Usage")
    rows = table_rows(page, "usage-table")
    from_api = [
        [p["bucket"][:10], p["model"], str(p["requests"]), p["gpu_seconds"]] for p in api["series"]
    ]
    assert len(from_api) == 1
    assert [[r[0], r[1], r[2]] for r in rows] == [f[:3] for f in from_api]
    assert [float(r[3]) for r in rows] == [f[3] for f in from_api]
    expect(page.get_by_test_id("total-requests")).to_have_text("7")
    assert page.locator("svg.chart rect[fill]").count() >= 2  # bars and legend
    shot(page, screenshots, "03-usage")

    with page.expect_download() as dl:
        page.get_by_role("link", name="Download CSV").click()
    body = Path(dl.value.path()).read_text()
    parsed = list(csv.DictReader(io.StringIO(body)))
    assert sum(int(r["requests"]) for r in parsed) == 7
    assert [(r["day"], r["model"]) for r in parsed] == [(f[0], f[1]) for f in from_api]

    # The day's link opens it per hour; the numbers equal GET /v1/usage per hour.
    today = from_api[0][0]
    page.locator("#usage-table").get_by_role("link", name=today).click()
    expect(page.get_by_test_id("usage-heading")).to_have_text(f"{today}, per hour")
    hourly: dict[str, Any] = httpx.get(
        f"{gateway.url}/v1/usage",
        params={"granularity": "hour", "start": today, "end": next_day(today)},
        headers=t.headers,
    ).json()
    hour_rows = table_rows(page, "usage-table")
    assert [[r[0], r[1], r[2]] for r in hour_rows] == [
        [p["bucket"][:10] + " " + p["bucket"][11:16], p["model"], str(p["requests"])]
        for p in hourly["series"]
    ]
    assert sum(int(r[2]) for r in hour_rows) == 7
    assert page.locator("svg.chart rect[fill]").count() >= 2
    shot(page, screenshots, "03b-usage-per-hour")
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download CSV").click()
    parsed = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
    assert [(r["hour"][:13], int(r["requests"])) for r in parsed] == [
        (p["bucket"][:13], p["requests"]) for p in hourly["series"]
    ]

    # With JavaScript, picking a range swaps only the results (HTMX): the page is not reloaded.
    page.get_by_role("link", name="Back to this month per day").click()
    expect(page.get_by_test_id("usage-heading")).to_contain_text("per day")
    page.evaluate("window.__notReloaded = true")
    page.get_by_label("Day (UTC)", exact=True).fill(today)
    page.get_by_role("button", name="Show hours").click()
    expect(page.get_by_test_id("usage-heading")).to_have_text(f"{today}, per hour")
    assert page.evaluate("window.__notReloaded === true")
    assert f"day={today}" in page.url
    expect(page.get_by_test_id("total-requests")).to_have_text("7")


def test_key_created_in_console_works_and_revoking_it_stops_it_within_a_second(
    gateway: Gateway,
    make_tenant: MakeTenant,
    make_console_user: MakeUser,
    new_page_with: NewPageWith,
    screenshots: Path,
) -> None:
    t = make_tenant()
    page = new_page_with(permissions=["clipboard-read", "clipboard-write"])
    login(page, gateway, make_console_user(tenant=t.tenant))
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("from-console")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("secret").input_value()
    assert secret.startswith("mk_live_")
    # The copy button puts the secret on the clipboard.
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    expect(page.locator("#secret-copy-status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot(page, screenshots, "04-key-created")
    headers = {"Authorization": f"Bearer {secret}"}
    assert infer(gateway, headers).status_code == 200

    # The secret is shown once: reloading the list does not show it again.
    page.goto(f"{gateway.url}/console/keys")
    assert secret not in page.content()
    prefix = secret.split("_")[2]
    row = page.locator(f'#keys-table tr[data-prefix="{prefix}"]')
    expect(row).to_contain_text("active")
    row.get_by_role("link", name="Revoke").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Revoke key")
    shot(page, screenshots, "05-revoke-confirm")
    page.get_by_role("button", name="Revoke key").click()
    revoked_at = time.monotonic()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    expect(page.locator(f'#keys-table tr[data-prefix="{prefix}"]')).to_contain_text("revoked")
    shot(page, screenshots, "06-keys-after-revoke")

    status = infer(gateway, headers).status_code
    while status != 401 and time.monotonic() - revoked_at < 1.5:
        time.sleep(0.05)
        status = infer(gateway, headers).status_code
    assert status == 401
    assert time.monotonic() - revoked_at < 1.5
    # The tenant's other key is untouched.
    assert infer(gateway, t.headers).status_code == 200


async def _meter(prefix: str, tenant_id: str, at: datetime, n: int, gpu_us: int) -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        meter = Meter(redis, prefix)
        for i in range(n):
            await meter.record_success(
                uuid.UUID(tenant_id), "double", gpu_us, at=at.timestamp() + i
            )
    finally:
        await redis.aclose()


def test_invoice_is_listed_and_detailed_after_billing_close(
    gateway: Gateway,
    cli: Cli,
    database_url: str,
    redis_prefix: str,
    make_tenant: MakeTenant,
    make_console_user: MakeUser,
    new_page: NewPage,
    screenshots: Path,
) -> None:
    t = make_tenant()
    with psycopg.connect(sync_pg_url(database_url)) as conn:
        conn.execute(
            "update subscriptions set starts_at = %s where tenant_id = %s",
            (datetime(2023, 7, 1, tzinfo=UTC), uuid.UUID(t.tenant_id)),
        )
    at = datetime(2023, 7, 10, 12, tzinfo=UTC)
    # Playwright's sync API owns this thread's event loop: meter from a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _meter(redis_prefix, t.tenant_id, at, 30, 5000)).result()
    closed = cli.json("billing", "close", "2023-07")
    mine = [i for i in closed["invoices"] if i["tenant"]["id"] == t.tenant_id]
    assert len(mine) == 1
    total = mine[0]["total_cents"]

    page = new_page()
    login(page, gateway, make_console_user(tenant=t.tenant))
    page.get_by_role("link", name="Invoices").click()
    rows = table_rows(page, "invoices-table")
    assert len(rows) == 1
    assert rows[0][0] == "2023-07"
    assert rows[0][4] == f"${total / 100:,.2f}"
    shot(page, screenshots, "07-invoices")
    page.get_by_role("link", name="2023-07").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Invoice 2023-07")
    expect(page.get_by_test_id("total")).to_have_text(f"${total / 100:,.2f}")
    expect(page.locator('#lines-table tr[data-kind="requests"]')).to_contain_text("30")
    expect(page.get_by_test_id("status")).not_to_have_text("")
    shot(page, screenshots, "08-invoice-detail")

    expect(page.get_by_test_id("credit")).to_have_text(
        money(
            mine[0]["total_cents"]
            - sum(line["amount_cents"] for line in mine[0]["lines"] if line["kind"] != "sla_credit")
        )
    )
    requests_line = next(x for x in mine[0]["lines"] if x["kind"] == "requests")

    # The closed month's usage page shows the invoice's quantities.
    page.get_by_role("link", name="Usage").click()
    page.get_by_label("First day (UTC)").fill("2023-07-01")
    page.get_by_label("Last day (UTC)").fill("2023-07-31")
    page.get_by_role("button", name="Show days").click()
    expect(page.get_by_test_id("usage-heading")).to_have_text("2023-07-01 to 2023-07-31, per day")
    expect(page.get_by_test_id("total-requests")).to_have_text(str(requests_line["quantity"]))

    page.get_by_role("link", name="Plan").click()
    expect(page.get_by_test_id("sla-target")).to_contain_text("%")
    shot(page, screenshots, "09-plan")


def test_operator_creates_a_tenant_and_publishes_a_model(
    gateway: Gateway, cli: Cli, make_console_user: MakeUser, new_page: NewPage, screenshots: Path
) -> None:
    page = new_page()
    login(page, gateway, make_console_user())
    assert page.url.endswith("/console/tenants")
    name = f"op-{uuid.uuid4().hex[:8]}"
    page.get_by_label("Name").fill(name)
    page.get_by_label("Plan").select_option("premium")
    page.get_by_role("button", name="Create tenant").click()
    expect(page.get_by_role("status")).to_contain_text(f"Tenant {name} created")
    expect(page.locator("#tenants-table")).to_contain_text(name)
    shot(page, screenshots, "10-operator-tenants")
    listed = {row["name"]: row for row in cli.json("tenants", "list")}
    assert listed[name]["plan"] == "premium"

    page.get_by_role("link", name="Models").click()
    page.get_by_label("Name").fill("echo_params")
    page.get_by_label("GPU share").fill("0.25")
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_role("status")).to_contain_text("Model echo_params published")
    expect(page.locator("#models-table")).to_contain_text("0.25")
    shot(page, screenshots, "11-operator-models")
    # Restore the share the rest of the suite publishes it with.
    page.get_by_label("Name").fill("echo_params")
    page.get_by_label("GPU share").fill("1")
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_role("status")).to_contain_text("published")

    # Invalid input is reported on the page, not a crash.
    page.get_by_label("Name").fill("bad/name")
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_role("alert")).to_contain_text("model name")

    # A tenant admin cannot reach operator pages.
    other = new_page()
    tenant = cli.json("tenants", "list")[0]["name"]
    login(other, gateway, make_console_user(tenant=tenant))
    assert other.goto(f"{gateway.url}/console/tenants").status == 404  # type: ignore[union-attr]


def test_a_tenant_admin_never_sees_or_changes_another_tenant(
    gateway: Gateway,
    cli: Cli,
    database_url: str,
    make_tenant: MakeTenant,
    make_console_user: MakeUser,
    new_page: NewPage,
    screenshots: Path,
) -> None:
    a, b = make_tenant(), make_tenant()
    for _ in range(3):
        assert infer(gateway, b.headers).status_code == 200
    with psycopg.connect(sync_pg_url(database_url)) as conn:
        # An invoice of B (any row will do: only its id matters here).
        invoice_id = uuid.uuid4()
        conn.execute(
            "insert into invoices (id, tenant_id, period_start, period_end, currency, status,"
            " subtotal_cents, credit_cents, total_cents) values"
            " (%s, %s, '2023-03-01', '2023-04-01', 'usd', 'draft', 100, 0, 100)",
            (invoice_id, uuid.UUID(b.tenant_id)),
        )
    page = new_page()
    login(page, gateway, make_console_user(tenant=a.tenant))

    for path in (
        f"/console/keys/{b.key_id}/revoke",
        f"/console/invoices/{invoice_id}",
        "/console/invoices/not-a-uuid",
        # The operator's per-tenant pages, B's and even A's own, are not for tenant admins.
        f"/console/tenants/{b.tenant_id}",
        f"/console/tenants/{b.tenant_id}/usage",
        f"/console/tenants/{b.tenant_id}/usage?day=2023-03-01",
        f"/console/tenants/{b.tenant_id}/usage.csv",
        f"/console/tenants/{b.tenant_id}/keys",
        f"/console/tenants/{b.tenant_id}/keys/{b.key_id}/revoke",
        f"/console/tenants/{b.tenant_id}/invoices",
        f"/console/tenants/{b.tenant_id}/invoices/{invoice_id}",
        f"/console/tenants/{b.tenant_id}/plan",
        f"/console/tenants/{a.tenant_id}/usage",
        "/console/tenants",
        "/console/models",
    ):
        response = page.goto(f"{gateway.url}{path}")
        assert response is not None
        assert response.status == 404, path
    shot(page, screenshots, "12-isolation-404")

    # A forged revoke of B's key (with A's valid CSRF token) is a 404 and changes nothing.
    page.goto(f"{gateway.url}/console/keys")
    token = page.locator('input[name="_csrf_token"]').first.input_value()
    r = page.request.post(
        f"{gateway.url}/console/keys/{b.key_id}/revoke", form={"_csrf_token": token}
    )
    assert r.status == 404
    assert infer(gateway, b.headers).status_code == 200
    for path, form in (
        (f"/console/tenants/{b.tenant_id}/keys/{b.key_id}/revoke", {}),
        (f"/console/tenants/{b.tenant_id}/plan", {"plan": "premium"}),
        (f"/console/tenants/{b.tenant_id}/keys", {"name": "planted"}),
    ):
        r = page.request.post(f"{gateway.url}{path}", form={"_csrf_token": token, **form})
        assert r.status == 404, path
    assert infer(gateway, b.headers).status_code == 200
    listed = {row["name"]: row for row in cli.json("tenants", "list")}
    assert listed[b.tenant]["plan"] == "standard"
    with psycopg.connect(sync_pg_url(database_url)) as conn:
        planted = conn.execute("select count(*) from api_keys where name = 'planted'").fetchone()
    assert planted == (0,)

    # A's usage page shows A's (empty) usage, not B's, whatever the query says.
    page.goto(f"{gateway.url}/console/usage?tenant={b.tenant_id}")
    expect(page.get_by_test_id("total-requests")).to_have_text("0")
    assert b.key_id not in page.content()
    page.goto(f"{gateway.url}/console/keys")
    assert b.prefix not in page.content()
    assert a.prefix in page.content()


def test_console_works_without_javascript(
    gateway: Gateway,
    make_tenant: MakeTenant,
    make_console_user: MakeUser,
    new_page_with: NewPageWith,
    screenshots: Path,
) -> None:
    t = make_tenant()
    for _ in range(2):
        assert infer(gateway, t.headers).status_code == 200
    page = new_page_with(java_script_enabled=False)
    login(page, gateway, make_console_user(tenant=t.tenant))
    expect(page.get_by_test_id("requests")).to_have_text("2")

    page.get_by_role("link", name="Usage").click()
    page.get_by_label("Day (UTC)", exact=True).fill(datetime.now(UTC).date().isoformat())
    page.get_by_role("button", name="Show hours").click()
    expect(page.get_by_test_id("usage-heading")).to_contain_text("per hour")
    expect(page.get_by_test_id("total-requests")).to_have_text("2")

    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("no-js")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("secret").input_value()
    # The copy button needs JavaScript, so it stays hidden; the secret is selectable text.
    expect(page.get_by_role("button", name="Copy")).to_be_hidden()
    shot(page, screenshots, "13-no-js-key-created")
    assert infer(gateway, {"Authorization": f"Bearer {secret}"}).status_code == 200

    prefix = secret.split("_")[2]
    page.goto(f"{gateway.url}/console/keys")
    page.locator(f'#keys-table tr[data-prefix="{prefix}"]').get_by_role("link").click()
    page.get_by_role("button", name="Revoke key").click()
    expect(page.locator(f'#keys-table tr[data-prefix="{prefix}"]')).to_contain_text("revoked")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/console/login")


def test_sessions_expire_when_idle_and_after_the_maximum_lifetime(
    short_session_gateway: Gateway,
    make_tenant: MakeTenant,
    make_console_user: MakeUser,
    new_page: NewPage,
    screenshots: Path,
) -> None:
    gw = short_session_gateway
    user = make_console_user(tenant=make_tenant().tenant)

    # Idle: no request for longer than the idle lifetime ends the session.
    page = new_page()
    login(page, gw, user)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Overview")
    time.sleep(SHORT_IDLE_S + 1)
    page.goto(f"{gw.url}/console/keys")
    assert "/console/login" in page.url
    shot(page, screenshots, "14a-session-idle-expired")
    # The cookie expired with the session; an HTMX refresh sends the window to the login form.
    assert "maas_console_session" not in {c["name"] for c in page.context.cookies()}
    fragment = page.request.get(f"{gw.url}/console/", headers={"HX-Request": "true"})
    assert fragment.status == 204
    assert fragment.headers["hx-redirect"] == "/console/login"

    # Busy: every request renews the idle lifetime, but not past the maximum since login.
    logged_in = time.monotonic()  # no later than the server's login time
    login(page, gw, user)
    kept_alive_past_idle = False
    while time.monotonic() - logged_in < SHORT_MAX_S + 2:
        page.goto(f"{gw.url}/console/keys")
        elapsed = time.monotonic() - logged_in
        if "/console/login" in page.url:
            break
        kept_alive_past_idle |= elapsed > SHORT_IDLE_S + 0.5
        time.sleep(0.25)
    assert "/console/login" in page.url
    assert kept_alive_past_idle
    assert time.monotonic() - logged_in >= SHORT_MAX_S
    # The browser still held the cookie, so the login form says why it is shown.
    expect(page.get_by_role("status")).to_have_text(
        "Your session has ended. Log in again to continue."
    )
    shot(page, screenshots, "14b-session-max-lifetime-ended")


def test_operator_drills_into_a_tenant_and_changes_its_plan(
    gateway: Gateway,
    cli: Cli,
    make_tenant: MakeTenant,
    make_console_user: MakeUser,
    new_page: NewPage,
    screenshots: Path,
) -> None:
    t = make_tenant()
    for _ in range(4):
        assert infer(gateway, t.headers).status_code == 200
    api: dict[str, Any] = httpx.get(
        f"{gateway.url}/v1/usage", params={"granularity": "day"}, headers=t.headers
    ).json()

    page = new_page()
    login(page, gateway, make_console_user())
    page.locator("#tenants-table").get_by_role("link", name=t.tenant, exact=True).click()
    expect(page.get_by_test_id("tenant-name")).to_have_text(t.tenant)
    expect(page.get_by_test_id("requests")).to_have_text("4")
    shot(page, screenshots, "15-operator-tenant-overview")

    tenant_nav = page.get_by_role("navigation", name=f"Tenant {t.tenant}")
    tenant_nav.get_by_role("link", name="Usage").click()
    rows = table_rows(page, "usage-table")
    assert [[r[0], r[1], r[2]] for r in rows] == [
        [p["bucket"][:10], p["model"], str(p["requests"])] for p in api["series"]
    ]
    tenant_nav.get_by_role("link", name="API keys").click()
    expect(page.locator(f'#keys-table tr[data-prefix="{t.prefix}"]')).to_contain_text("active")
    tenant_nav.get_by_role("link", name="Invoices").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Invoices")

    tenant_nav.get_by_role("link", name="Plan").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Plan: Standard")
    page.get_by_label("New plan").select_option("premium")
    page.get_by_role("button", name="Change plan").click()
    expect(page.get_by_role("status")).to_contain_text("Plan changed to Premium")
    expect(page.get_by_test_id("sla-target")).to_contain_text("99.9%")
    shot(page, screenshots, "16-operator-plan-changed")
    listed = {row["name"]: row for row in cli.json("tenants", "list")}
    assert listed[t.tenant]["plan"] == "premium"

    # Changing to the plan the tenant is already on is refused on the page.
    page.get_by_label("New plan").select_option("premium")
    page.get_by_role("button", name="Change plan").click()
    expect(page.get_by_role("alert")).to_contain_text("already on the Premium plan")

    # The tenant's own admin sees the new plan, and still only their own pages.
    admin = new_page()
    login(admin, gateway, make_console_user(tenant=t.tenant))
    expect(admin.get_by_test_id("plan")).to_have_text("Premium")
    expect(admin.get_by_role("navigation", name=f"Tenant {t.tenant}")).to_have_count(0)
