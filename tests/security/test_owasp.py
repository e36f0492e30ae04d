"""OWASP API Security Top 10 checks against a real gateway, Postgres and Redis.

API1 object-level authorization: another tenant's invoice, key and usage are 404 / invisible.
API2 authentication: one answer for every wrong key; the key check compares keyed hashes in
constant time; keys are never logged nor shown again after creation.
API5 function-level authorization: console pages only for their role.
API8 misconfiguration: webhooks only with valid signatures; secrets only from configuration.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from gateway.auth import Authenticator
from tenants import services
from tenants.keys import hash_key, key_matches
from tests.conftest import (
    BIN,
    ROOT,
    STRIPE_WEBHOOK_SECRET,
    Cli,
    Gateway,
    TenantKey,
    start_gateway,
    stop_process,
)
from tests.stripe_server.signing import sign_payload
from tests.support import free_port, sync_pg_url, wait_until

MakeTenant = Callable[..., TenantKey]
GOOD = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
PASSWORD = "a long and secret console password"


def infer(url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/double/infer", headers=headers, json=GOOD, timeout=30)


def secret_part(key: str) -> str:
    """The part of an API key that is secret (the prefix is shown everywhere on purpose)."""
    return key.rsplit("_", 1)[1]


def insert_invoice(database_url: str, tenant_id: str, status: str = "open") -> uuid.UUID:
    invoice_id = uuid.uuid4()
    with psycopg.connect(sync_pg_url(database_url)) as conn:
        conn.execute(
            "insert into invoices (id, tenant_id, period_start, period_end, currency, status,"
            " subtotal_cents, credit_cents, total_cents, stripe_invoice_id) values"
            " (%s, %s, '2023-03-01', '2023-04-01', 'usd', %s, 100, 0, 100, %s)",
            (invoice_id, uuid.UUID(tenant_id), status, f"in_{invoice_id.hex}"),
        )
    return invoice_id


# --- console sessions over plain HTTP ----------------------------------------------------------


def make_console_user(cli: Cli, tenant: str | None) -> str:
    email = f"sec-{uuid.uuid4().hex[:8]}@example.test"
    role = ["--tenant", tenant] if tenant else ["--operator"]
    result = subprocess.run(
        [str(BIN / "maas"), "console-users", "create", "--email", email, *role, "--password-stdin"],
        input=PASSWORD + "\n",
        env=cli.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return email


_CSRF_FIELD = re.compile(r'name="_csrf_token"\s+value="([^"]+)"')


def csrf_token(page: httpx.Response) -> str:
    found = _CSRF_FIELD.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


class Console:
    """A logged-in console user: an httpx client holding the session and CSRF cookies."""

    def __init__(self, gateway: Gateway, email: str | None) -> None:
        self.client = httpx.Client(base_url=gateway.url, follow_redirects=False, timeout=30)
        if email is not None:
            form = self.client.get("/console/login")
            r = self.client.post(
                "/console/login",
                data={"email": email, "password": PASSWORD, "_csrf_token": csrf_token(form)},
            )
            assert r.status_code == 303, r.text
            assert r.headers["location"] != "/console/login"

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def post(self, path: str, data: dict[str, str] | None = None) -> httpx.Response:
        """A form post carrying a valid CSRF token (the double-submit cookie and its token from
        a form of the console): only authorization can stop it."""
        page = self.client.get("/console/login")
        return self.client.post(path, data={**(data or {}), "_csrf_token": csrf_token(page)})

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def console(gateway: Gateway) -> Iterator[Callable[[str | None], Console]]:
    opened: list[Console] = []

    def open_as(email: str | None) -> Console:
        c = Console(gateway, email)
        opened.append(c)
        return c

    yield open_as
    for c in opened:
        c.close()


# --- API1: object-level authorization ----------------------------------------------------------


def test_another_tenants_invoice_is_404_by_api_key(
    gateway: Gateway, database_url: str, make_tenant: MakeTenant
) -> None:
    a, b = make_tenant(), make_tenant()
    theirs = insert_invoice(database_url, b.tenant_id)

    r = httpx.get(f"{gateway.url}/v1/invoices/{theirs}", headers=a.headers)
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    # ...and exactly what a made-up id gets, so nothing says the id exists.
    made_up = httpx.get(f"{gateway.url}/v1/invoices/{uuid.uuid4()}", headers=a.headers)
    assert made_up.status_code == 404
    assert made_up.json() == r.json()
    assert httpx.get(f"{gateway.url}/v1/invoices", headers=a.headers).json() == {"invoices": []}

    mine = httpx.get(f"{gateway.url}/v1/invoices/{theirs}", headers=b.headers)
    assert mine.status_code == 200
    assert mine.json()["tenant"]["id"] == b.tenant_id


def test_another_tenants_key_and_invoice_are_404_in_the_console_and_stay_untouched(
    gateway: Gateway,
    database_url: str,
    cli: Cli,
    make_tenant: MakeTenant,
    console: Callable[[str | None], Console],
) -> None:
    a, b = make_tenant(), make_tenant()
    theirs = insert_invoice(database_url, b.tenant_id)
    admin_a = console(make_console_user(cli, a.tenant))

    for path in (
        f"/console/keys/{b.key_id}/revoke",
        f"/console/invoices/{theirs}",
        f"/console/invoices/{uuid.uuid4()}",
    ):
        assert admin_a.get(path).status_code == 404, path
    assert admin_a.post(f"/console/keys/{b.key_id}/revoke").status_code == 404
    assert infer(gateway.url, b.headers).status_code == 200  # B's key still works
    with psycopg.connect(sync_pg_url(database_url)) as conn:
        revoked = conn.execute(
            "select revoked_at from api_keys where id = %s", (uuid.UUID(b.key_id),)
        ).fetchone()
    assert revoked == (None,)
    page = admin_a.get("/console/keys").text
    assert b.prefix not in page
    assert a.prefix in page


def test_usage_api_only_ever_shows_the_callers_tenant(
    gateway: Gateway, make_tenant: MakeTenant
) -> None:
    a, b = make_tenant(), make_tenant()
    for _ in range(3):
        assert infer(gateway.url, b.headers).status_code == 200

    def total(t: TenantKey, params: dict[str, str] | None = None) -> int:
        r = httpx.get(f"{gateway.url}/v1/usage", headers=t.headers, params=params)
        assert r.status_code == 200, r.text
        return int(r.json()["totals"]["requests"])

    assert total(b) == 3
    assert total(a) == 0
    assert total(a, {"tenant": b.tenant_id, "tenant_id": b.tenant_id, "key": b.key_id}) == 0


# --- API2: authentication ----------------------------------------------------------------------


def test_every_wrong_key_gets_the_same_answer(gateway: Gateway, make_tenant: MakeTenant) -> None:
    t = make_tenant()
    assert infer(gateway.url, t.headers).status_code == 200  # cached in the gateway now
    flipped = "A" if t.secret[-1] != "A" else "B"
    unknown_prefix = "Z" * 10 if t.prefix != "Z" * 10 else "Y" * 10
    wrong = {
        "right prefix, wrong secret": t.secret[:-1] + flipped,
        "unknown prefix, right secret": t.secret.replace(t.prefix, unknown_prefix),
        "unknown prefix, random secret": f"mk_live_{unknown_prefix}_{'q' * 40}",
    }
    answers = {}
    for what, key in wrong.items():
        r = infer(gateway.url, {"Authorization": f"Bearer {key}"})
        assert r.status_code == 401, what
        answers[what] = r.json()
    assert all(
        a == {"error": "invalid API key", "code": "invalid_api_key"} for a in answers.values()
    )


def test_key_check_compares_keyed_hashes_in_constant_time() -> None:
    """Not a timing measurement: the comparison is hmac.compare_digest over digests that have
    the same length whatever is presented, and unknown prefixes are hashed too."""
    lengths = {len(hash_key("server", k)) for k in ("", "x", "mk_live_" + "a" * 120, "é" * 50)}
    assert lengths == {64}
    assert key_matches("server", "k", hash_key("server", "k"))
    assert not key_matches("server", "k", hash_key("other-server", "k"))
    assert "hmac.compare_digest" in inspect.getsource(key_matches)
    assert "hmac.compare_digest" in inspect.getsource(Authenticator.authenticate)
    # The database path hashes a placeholder when the prefix is unknown (same work either way).
    assert "key_matches(" in inspect.getsource(services.authenticate)


def test_keys_are_never_logged_or_shown_again(
    base_env: dict[str, str],
    artifacts: Path,
    cli: Cli,
    make_tenant: MakeTenant,
    console: Callable[[str | None], Console],
) -> None:
    log_path = artifacts / "gateway-security-debug.log"
    env = {**base_env, "MAAS_LOG_LEVEL": "DEBUG"}
    gw = start_gateway(env, log_path)
    outputs: list[str] = []  # everything but the one-time creation outputs
    try:
        t = make_tenant()
        created = cli.run("keys", "create", t.tenant, "--name", "second", "--json", env=env)
        assert created.returncode == 0, created.stderr
        second = json.loads(created.stdout)
        human = cli.run("keys", "create", t.tenant, "--name", "third", env=env)
        assert human.returncode == 0, human.stderr
        third = re.search(r"mk_live_\w+", human.stdout)
        assert third is not None
        outputs += [created.stderr, human.stderr]
        secrets = [t.secret, second["secret"], third.group(0)]

        for key in secrets:
            assert infer(gw.url, {"Authorization": f"Bearer {key}"}).status_code == 200
            for forged in (key[:-1] + "0", key + "0", key.replace("mk_live_", "mk_test_")):
                r = infer(gw.url, {"Authorization": f"Bearer {forged}"})
                assert r.status_code == 401
                outputs.append(r.text)
            for path in ("/v1/usage", "/v1/invoices", "/v2/models/double"):
                r = httpx.get(f"{gw.url}{path}", headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200
                outputs.append(r.text)

        # The console shows a new key's secret once; the keys page never again.
        admin = Console(gw, make_console_user(cli, t.tenant))
        try:
            page = admin.get("/console/keys")
            made = admin.client.post(
                "/console/keys", data={"name": "console", "_csrf_token": csrf_token(page)}
            )
            assert made.status_code == 201
            shown = re.search(r"mk_live_\w+", made.text)
            assert shown is not None
            secrets.append(shown.group(0))
            outputs.append(admin.get("/console/keys").text)
            outputs.append(admin.get("/console/").text)
        finally:
            admin.close()

        for listing in (("tenants", "list", "--json"), ("tenants", "list")):
            result = cli.run(*listing, env=env)
            assert result.returncode == 0
            outputs += [result.stdout, result.stderr]
        revoked = cli.run("keys", "revoke", second["id"], "--json", env=env)
        assert revoked.returncode == 0, revoked.stderr
        assert json.loads(revoked.stdout)["prefix"] == second["prefix"]
        outputs += [revoked.stdout, revoked.stderr]
        r = infer(gw.url, {"Authorization": f"Bearer {second['secret']}"})
        assert r.status_code == 401
        outputs.append(r.text)
    finally:
        stop_process(gw.process)

    log = log_path.read_text(errors="replace")
    assert "DEBUG" in log or "debug" in log.lower()  # the log level did reach the gateway
    everything = "\n".join([log, *outputs])
    for key in secrets:
        assert secret_part(key) not in everything
        assert key not in everything


# --- API5: function-level authorization (console roles) ---------------------------------------

OPERATOR_PAGES = ("/console/tenants", "/console/models")
TENANT_PAGES = ("/console/", "/console/usage", "/console/keys", "/console/invoices")


def test_console_pages_need_a_login(console: Callable[[str | None], Console]) -> None:
    anonymous = console(None)
    for path in (*TENANT_PAGES, *OPERATOR_PAGES, "/console/plan", "/console/usage.csv"):
        r = anonymous.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"] == "/console/login"


def test_tenant_admin_gets_404_on_operator_pages_and_actions(
    gateway: Gateway,
    cli: Cli,
    make_tenant: MakeTenant,
    console: Callable[[str | None], Console],
) -> None:
    t = make_tenant()
    admin = console(make_console_user(cli, t.tenant))
    for path in OPERATOR_PAGES:
        assert admin.get(path).status_code == 404, path
    name = f"sneaky-{uuid.uuid4().hex[:6]}"
    r = admin.post("/console/tenants", {"name": name, "plan": "standard"})
    assert r.status_code == 404
    assert admin.post("/console/models", {"name": name}).status_code == 404
    assert all(row["name"] != name for row in cli.json("tenants", "list"))
    assert all(row["name"] != name for row in cli.json("models", "list"))

    for path in TENANT_PAGES:  # their own pages work
        assert admin.get(path).status_code == 200, path


def test_operator_sees_operator_pages_but_no_tenant_pages(
    cli: Cli, console: Callable[[str | None], Console]
) -> None:
    operator = console(make_console_user(cli, None))
    for path in OPERATOR_PAGES:
        assert operator.get(path).status_code == 200, path
    for path in ("/console/keys", "/console/invoices", "/console/usage"):
        assert operator.get(path).status_code == 404, path


def test_anonymous_console_posts_change_nothing(
    cli: Cli, console: Callable[[str | None], Console]
) -> None:
    anonymous = console(None)
    name = f"anon-{uuid.uuid4().hex[:6]}"
    r = anonymous.post("/console/tenants", {"name": name, "plan": "standard"})
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login"
    assert all(row["name"] != name for row in cli.json("tenants", "list"))


# --- API8: webhooks only with valid signatures ------------------------------------------------


def _event(stripe_invoice_id: str) -> bytes:
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "invoice.paid",
        "data": {"object": {"id": stripe_invoice_id, "object": "invoice"}},
    }
    return json.dumps(event).encode()


def _invoice_state(database_url: str, invoice_id: uuid.UUID) -> tuple[str, int]:
    with psycopg.connect(sync_pg_url(database_url)) as conn:
        status = conn.execute("select status from invoices where id = %s", (invoice_id,))
        row = status.fetchone()
        assert row is not None
        events = conn.execute("select count(*) from stripe_events").fetchone()
        assert events is not None
        return str(row[0]), int(events[0])


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(lambda body, now: None, id="missing"),
        pytest.param(lambda body, now: "", id="empty"),
        pytest.param(lambda body, now: "garbage", id="garbage"),
        pytest.param(lambda body, now: sign_payload(body, "whsec_wrong", now), id="wrong-secret"),
        pytest.param(
            lambda body, now: sign_payload(body, STRIPE_WEBHOOK_SECRET, now - 3600),
            id="expired",
        ),
        pytest.param(
            lambda body, now: sign_payload(body, STRIPE_WEBHOOK_SECRET, now + 3600),
            id="from-the-future",
        ),
        pytest.param(
            lambda body, now: sign_payload(body + b" ", STRIPE_WEBHOOK_SECRET, now),
            id="other-payload",
        ),
        pytest.param(
            lambda body, now: sign_payload(body, STRIPE_WEBHOOK_SECRET, now).replace("v1=", "v0="),
            id="unknown-scheme",
        ),
    ],
)
def test_webhook_without_a_valid_signature_is_400_and_changes_nothing(
    gateway: Gateway,
    database_url: str,
    make_tenant: MakeTenant,
    signature: Callable[[bytes, int], str | None],
) -> None:
    t = make_tenant()
    invoice_id = insert_invoice(database_url, t.tenant_id)
    body = _event(f"in_{invoice_id.hex}")
    before = _invoice_state(database_url, invoice_id)
    header = signature(body, int(time.time()))
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    r = httpx.post(f"{gateway.url}/webhooks/stripe", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_signature"
    assert _invoice_state(database_url, invoice_id) == before

    # The same event, correctly signed, does change it (so the check above could fail).
    signed = sign_payload(body, STRIPE_WEBHOOK_SECRET, int(time.time()))
    ok = httpx.post(
        f"{gateway.url}/webhooks/stripe", content=body, headers={"Stripe-Signature": signed}
    )
    assert ok.status_code == 200, ok.text
    assert _invoice_state(database_url, invoice_id)[0] == "paid"


# --- API8: secrets only from configuration ----------------------------------------------------


def _serve(env: dict[str, str], cwd: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "maas"), "serve", "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(None, id="unset"),
        pytest.param("dev-insecure-secret-change-me", id="built-in-value"),
        pytest.param("short", id="too-short"),
    ],
)
def test_serve_refuses_an_unset_or_weak_secret_key(
    base_env: dict[str, str], tmp_path: Path, secret: str | None
) -> None:
    env = {k: v for k, v in base_env.items() if k != "MAAS_SECRET_KEY"}
    if secret is not None:
        env["MAAS_SECRET_KEY"] = secret
    port = free_port()
    proc = _serve(env, tmp_path, port)  # tmp_path: no .env to pick a key up from
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert proc.returncode == 1, out
    assert "MAAS_SECRET_KEY" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1)


def test_serve_accepts_the_dev_secret_only_when_told_and_warns(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in base_env.items() if k != "MAAS_SECRET_KEY"}
    env["MAAS_ALLOW_INSECURE_SECRET_KEY"] = "true"
    port = free_port()
    proc = _serve(env, tmp_path, port)
    try:

        def live() -> bool:
            assert proc.poll() is None, "maas serve exited"
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v2/health/live").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(live, 60, "gateway with the development secret")
    finally:
        stop_process(proc)
    assert proc.stdout is not None
    assert "WARNING" in proc.stdout.read()


# Shapes of real credentials; test fixtures use obviously fake values that do not match.
LIVE_LOOKING = re.compile(
    r"(?:sk|rk)_live_[0-9A-Za-z]{16,}"
    r"|whsec_[0-9A-Za-z+/]{24,}"
    r"|mk_live_[0-9A-Za-z]{10}_[0-9A-Za-z]{40}"
    r"|AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[0-9A-Za-z]{36}"
    r"|xox[abpr]-[0-9A-Za-z-]{10,}"
    r"|-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"
)


def test_no_live_looking_secret_is_committed() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    found = []
    for name in filter(None, listed):
        path = ROOT / name.decode()
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        found += [f"{name.decode()}: {m.group(0)[:12]}…" for m in LIVE_LOOKING.finditer(text)]
    assert found == []


def test_secret_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from tenants.settings import Settings

    monkeypatch.setenv("MAAS_SECRET_KEY", "from-the-environment-0123456789")
    monkeypatch.setenv("MAAS_STRIPE_WEBHOOK_SECRET", "whsec_from_the_environment")
    settings = Settings(_env_file=None)
    assert settings.secret_key == "from-the-environment-0123456789"
    assert settings.stripe_webhook_secret == "whsec_from_the_environment"
    assert settings.secret_key_problem() is None
    monkeypatch.delenv("MAAS_SECRET_KEY")
    assert Settings(_env_file=None).secret_key_problem() is not None
