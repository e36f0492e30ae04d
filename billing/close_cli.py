"""``maas billing close PERIOD``: the operator's monthly batch job."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import typer
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import InterfaceError, OperationalError

from billing.close import CloseReport, MonthlyClose, TenantOutcome
from billing.gpu import reconciler_for
from billing.pricing import Period
from billing.rollup import Rollup
from billing.stripe_api import SdkStripeApi
from billing.stripe_outbox import OutboxPush
from tenants.cli_support import JsonOption, console, err_console, run
from tenants.db import make_engine, make_sessionmaker
from tenants.settings import get_settings

billing_app = typer.Typer(help="Invoicing.", no_args_is_help=True)

# Postgres or Redis not answering: the close is resumable, so it may simply be run again.
_UNREACHABLE = (
    OperationalError,
    InterfaceError,
    OSError,
    ConnectionError,
    RedisConnectionError,
    RedisTimeoutError,
)


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def _summary(report: CloseReport) -> Table:
    title = f"{'Dry run: ' if report.dry_run else ''}billing close {report.period}"
    table = Table(title=title)
    for col in ("tenant", "total", "credit", "availability", "status", "Stripe invoice", "error"):
        table.add_column(col)
    for o in report.outcomes:
        inv = o.invoice
        credit = sum(ln["amount_cents"] for ln in inv["lines"] if ln["kind"] == "sla_credit")
        table.add_row(
            o.tenant_name,
            _money(inv["total_cents"]),
            _money(credit) if credit else "-",
            f"{inv.get('availability_percent') or '-'}%",
            o.status,
            o.stripe_invoice_id or "-",
            (o.error or "")[:60],
        )
    total = sum(o.invoice["total_cents"] for o in report.outcomes)
    table.caption = (
        f"{len(report.outcomes)} tenants, total {_money(total)}, "
        f"{len(report.failed)} failed, {report.seconds:.1f} s"
    )
    return table


@billing_app.command("close")
def close(
    period: str = typer.Argument(..., help="Month to close, e.g. 2026-11."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print invoices; write nothing."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=64),
    days_until_due: int = typer.Option(30, "--days-until-due", min=1, max=365),
    wait: float = typer.Option(
        0.0,
        "--wait",
        min=0.0,
        help="While Postgres or Redis is unreachable, retry (with backoff) for this many seconds.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Final rollup, one invoice per tenant, push each to Stripe. Safe to re-run."""
    settings = get_settings()

    async def go() -> CloseReport:
        deadline = time.monotonic() + wait
        delay = 1.0
        while True:
            try:
                return await attempt()
            except _UNREACHABLE as exc:
                if time.monotonic() + delay > deadline:
                    raise
                err_console.print(
                    f"waiting for Postgres/Redis ({type(exc).__name__}: {exc}); "
                    f"retrying in {delay:.0f} s",
                    highlight=False,
                    soft_wrap=True,  # one line per attempt, whatever the terminal width
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def attempt() -> CloseReport:
        parsed = Period.parse(period)
        engine = make_engine(settings.database_url, pool_size=concurrency + 2)
        redis = Redis.from_url(settings.redis_url)
        try:
            reconciler, source = reconciler_for(engine, settings)
            rollup = Rollup(redis, engine, settings.redis_prefix, reconciler=reconciler)

            async def final_rollup() -> dict[str, Any]:
                return (await rollup.run_pass()).as_json()

            pusher = None
            if not dry_run:
                api = SdkStripeApi(settings.stripe_api_key, api_base=settings.stripe_api_base)
                pusher = OutboxPush(make_sessionmaker(engine), api, days_until_due=days_until_due)
            job = MonthlyClose(
                engine,
                make_sessionmaker(engine),
                pusher,
                final_rollup=final_rollup,
                concurrency=concurrency,
            )
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                disable=as_json or not err_console.is_terminal,
            ) as progress:
                task = progress.add_task(f"closing {parsed}", total=None)

                def on_tenants(n: int) -> None:
                    progress.update(task, total=n)

                def on_outcome(o: TenantOutcome) -> None:
                    progress.advance(task)

                return await job.run(
                    parsed, dry_run=dry_run, on_tenants=on_tenants, on_outcome=on_outcome
                )
        finally:
            if source is not None:
                await source.close()
            await redis.aclose()
            await engine.dispose()

    report = run(go, as_json)
    if as_json:
        print(json.dumps(report.as_json(), default=str))
    else:
        console.print(_summary(report))
    if report.failed:
        raise typer.Exit(1)
