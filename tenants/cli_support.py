"""What every ``maas`` command shares: running async use cases in one unit of work, printing
human or ``--json`` output, and turning failures into a clear message and a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from tenants.db import make_engine, make_sessionmaker
from tenants.errors import DomainError
from tenants.settings import get_settings

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

JsonOption = typer.Option(False, "--json", help="Machine-readable JSON output.")


@asynccontextmanager
async def unit_of_work() -> AsyncIterator[AsyncSession]:
    """One session, committed when the block succeeds, rolled back otherwise."""
    engine = make_engine(get_settings().database_url, pool_size=1)
    try:
        async with make_sessionmaker(engine)() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise
    finally:
        await engine.dispose()


def fail(message: str, code: str, as_json: bool, exit_code: int = 1) -> typer.Exit:
    if as_json:
        print(json.dumps({"error": message, "code": code}), file=sys.stderr)
    else:
        err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(exit_code)


def run(coro_fn: Callable[[], Awaitable[T]], as_json: bool) -> T:
    """Run an async use case; domain errors and unreachable services become exit code 1."""
    try:
        return asyncio.run(_call(coro_fn))
    except DomainError as exc:
        raise fail(exc.message, exc.code, as_json) from None
    except (OperationalError, InterfaceError, OSError, ConnectionError) as exc:
        raise fail(
            f"database unreachable ({type(exc).__name__}); check MAAS_DATABASE_URL",
            "database_unreachable",
            as_json,
        ) from None
    except DBAPIError as exc:
        raise fail(f"database error: {exc.orig}", "database_error", as_json) from None


async def _call(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return await coro_fn()


def emit(payload: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        print(json.dumps(payload, default=str))
    else:
        human()
