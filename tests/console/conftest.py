"""Console fixtures: one headless Chromium (Debian's, ``/usr/bin/chromium``) per session,
console users made with ``maas console-users create``, logged-in pages, screenshots, and a
second gateway whose console sessions expire within seconds."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import BIN, ROOT, Cli, Gateway, start_gateway, stop_process

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery staple"


@dataclass
class ConsoleUser:
    email: str
    password: str
    role: str
    tenant_id: str | None


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    # Package scope: Playwright's sync API keeps an event loop running in this thread while it
    # is open, so it must be closed before the asyncio tests of the other packages run.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (see .ci/run)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def screenshots(artifacts: Path) -> Path:
    path = artifacts / "screenshots"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def make_console_user(cli: Cli) -> Callable[..., ConsoleUser]:
    def make(tenant: str | None = None, password: str = PASSWORD) -> ConsoleUser:
        email = f"u-{uuid.uuid4().hex[:8]}@example.test"
        role_args = ["--tenant", tenant] if tenant else ["--operator"]
        args = ["create", "--email", email, *role_args, "--password-stdin", "--json"]
        result = subprocess.run(
            [str(BIN / "maas"), "console-users", *args],
            input=password + "\n",
            env=cli.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        return ConsoleUser(email, password, out["role"], out["tenant"])

    return make


def login(page: Page, gateway: Gateway, user: ConsoleUser) -> None:
    page.goto(f"{gateway.url}/console/login")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(user.password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    assert "/console/login" not in page.url, page.content()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[], Page]]:
    contexts = []

    def make() -> Page:
        ctx = browser.new_context(viewport={"width": 1200, "height": 900})
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for ctx in contexts:
        ctx.close()


SHORT_IDLE_S = 4
SHORT_MAX_S = 9


@pytest.fixture(scope="package")
def short_session_gateway(
    base_env: dict[str, str], artifacts: Path, published_models: list[str]
) -> Iterator[Gateway]:
    """A gateway whose console sessions end after ``SHORT_IDLE_S`` idle seconds and at the
    latest ``SHORT_MAX_S`` seconds after login."""
    env = base_env | {
        "MAAS_CONSOLE_SESSION_IDLE_S": str(SHORT_IDLE_S),
        "MAAS_CONSOLE_SESSION_MAX_S": str(SHORT_MAX_S),
    }
    gw = start_gateway(env, artifacts / "gateway-short-sessions.log")
    yield gw
    stop_process(gw.process)


@pytest.fixture
def new_page_with(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Pages of a context with options (no JavaScript, clipboard permissions, ...)."""
    contexts = []

    def make(**options: Any) -> Page:
        ctx = browser.new_context(viewport={"width": 1200, "height": 900}, **options)
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for ctx in contexts:
        ctx.close()
