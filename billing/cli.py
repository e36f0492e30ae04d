"""``maas usage …``: the rollup of hot usage counters (Redis) into the usage ledger (Postgres)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import typer
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich.table import Table

from billing.gpu import gpu_report, reconciler_for
from billing.pricing import Period
from billing.rollup import PassSummary, Rollup, pause_from_env
from tenants import services
from tenants.cli_support import JsonOption, console, err_console, fail, run, unit_of_work
from tenants.db import make_engine
from tenants.settings import get_settings

usage_app = typer.Typer(help="Usage metering: rollup of live counters.", no_args_is_help=True)


def _human(summary: PassSummary) -> None:
    line = (
        f"rollup: {summary.drains_applied} drain(s) applied from {summary.tenants} tenant(s), "
        f"{summary.fields} field(s), {summary.hourly_rows} hourly + "
        f"{summary.five_min_rows} 5-minute row(s) upserted, "
        f"{summary.leftovers_recovered} leftover(s) recovered, "
        f"{summary.leftovers_already_applied} already applied, in {summary.duration_s:.3f} s"
    )
    console.print(line, highlight=False)
    if summary.gpu is not None:
        gpu = summary.gpu
        if gpu["status"] == "done":
            measured = sum(m["measured_us"] for m in gpu["models"])
            unattributed = sum(m["unattributed_us"] for m in gpu["models"])
            console.print(
                f"gpu: {measured / 1e6:.6f} s measured by Triton, "
                f"{unattributed / 1e6:.6f} s unattributed, {len(gpu['models'])} model(s)",
                highlight=False,
            )
        else:
            err_console.print(f"gpu: reconciliation skipped: {gpu['reason']}", highlight=False)
    for err in summary.errors:
        err_console.print(f"[bold red]error:[/] tenant {err['tenant']}: {err['error']}")


def _emit(summary: PassSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.as_json()), flush=True)
    else:
        _human(summary)


async def _tenant_ids(refs: list[str]) -> list[str]:
    async with unit_of_work() as session:
        return [str((await services.find_tenant(session, ref)).id) for ref in refs]


@usage_app.command("rollup")
def rollup(
    loop: bool = typer.Option(False, "--loop", help="Keep rolling up until SIGINT/SIGTERM."),
    interval: float = typer.Option(
        60.0, "--interval", min=0.0, help="Seconds between two passes with --loop."
    ),
    tenant: list[str] = typer.Option(
        [], "--tenant", help="Only this tenant (name or id); repeatable. Default: every tenant."
    ),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Tenants drained at once."),
    as_json: bool = JsonOption,
) -> None:
    """Drain live usage counters into the hourly ledger, exactly once.

    One pass, or with --loop one pass every --interval seconds until SIGINT/SIGTERM.

    A signal lets the current pass finish, then the command exits 0.

    With --json, one JSON object (a line) per pass.
    """
    settings = get_settings()
    try:
        pause = pause_from_env()
    except ValueError as exc:
        raise fail(str(exc), "invalid_input", as_json) from None

    async def go() -> int:
        tenants = await _tenant_ids(tenant) if tenant else None
        engine = make_engine(settings.database_url, pool_size=concurrency)
        redis = Redis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=5)
        reconciler, source = reconciler_for(engine, settings)
        worker = Rollup(
            redis,
            engine,
            settings.redis_prefix,
            concurrency=concurrency,
            pause=pause,
            reconciler=reconciler,
        )
        try:
            if not loop:
                summary = await worker.run_pass(tenants)
                _emit(summary, as_json)
                return 1 if summary.errors else 0
            return await _loop(worker, tenants, interval, as_json)
        finally:
            if source is not None:
                await source.close()
            await redis.aclose()
            await engine.dispose()

    try:
        code = run(go, as_json)
    except RedisError as exc:
        raise fail(
            f"Redis unreachable ({exc}); check MAAS_REDIS_URL", "redis_unreachable", as_json
        ) from None
    if code:
        raise typer.Exit(code)


async def _loop(worker: Rollup, tenants: list[str] | None, interval: float, as_json: bool) -> int:
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # A signal only sets the flag: the pass in progress runs to its end, then we exit 0.
        running.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            _emit(await worker.run_pass(tenants), as_json)
        except Exception as exc:  # keep looping: Redis or Postgres may come back
            payload: dict[str, Any] = {"error": f"rollup pass failed: {exc}", "code": "pass_failed"}
            if as_json:
                print(json.dumps(payload), file=sys.stderr, flush=True)
            else:
                err_console.print(f"[bold red]error:[/] {payload['error']}", highlight=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
    return 0


def _seconds(us: int) -> str:
    return f"{us / 1_000_000:.6f}"


@usage_app.command("gpu-report")
def gpu_report_command(
    period: str | None = typer.Option(
        None, "--period", help="Month, e.g. 2026-11 (default: the current month, UTC)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """GPU time per model: measured by Triton, attributed per tenant, unattributed (direct
    traffic, warm-ups: never billed) and the estimate billed where a backend has no statistics."""
    settings = get_settings()
    try:
        month = Period.parse(period) if period else Period.containing(datetime.now(UTC))
    except ValueError as exc:
        raise fail(str(exc), "invalid_period", as_json) from None

    async def go() -> dict[str, Any]:
        engine = make_engine(settings.database_url, pool_size=1)
        try:
            report = await gpu_report(engine, month.start, month.end)
        finally:
            await engine.dispose()
        return {"period": str(month), **report}

    report = run(go, as_json)
    if as_json:
        print(json.dumps(report))
        return
    table = Table(title=f"GPU time, {month} (seconds)")
    for col in ("model", "tenant", "measured", "attributed", "unattributed", "estimated", "note"):
        table.add_column(col, justify="left" if col in ("model", "tenant", "note") else "right")
    for m in report["models"]:
        note = "no statistics: estimate billed" if m["has_statistics"] is False else ""
        if m["restarts"]:
            note += f"{'; ' if note else ''}{m['restarts']} Triton restart(s)"
        table.add_row(
            m["model"],
            "(all)",
            _seconds(m["measured_us"]),
            _seconds(m["attributed_us"]),
            _seconds(m["unattributed_us"]),
            _seconds(m["estimated_us"]),
            note,
        )
        for t in m["tenants"]:
            table.add_row(
                "",
                t["tenant"]["name"],
                "",
                _seconds(t["attributed_us"]),
                "",
                _seconds(t["estimated_us"]),
                f"unreconciled estimate {_seconds(t['unreconciled_estimate_us'])}"
                if t["unreconciled_estimate_us"]
                else "",
            )
    console.print(table)
