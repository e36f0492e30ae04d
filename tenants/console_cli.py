"""``maas console-users``: accounts for the web console."""

from __future__ import annotations

import getpass
import sys
from typing import Any

import typer

from tenants.cli_support import JsonOption, console, emit, run, unit_of_work
from tenants.console_users import create_console_user
from tenants.errors import ValidationError

console_users_app = typer.Typer(help="Web console users.", no_args_is_help=True)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise ValidationError("the passwords differ")
    return first


@console_users_app.command("create")
def console_users_create(
    email: str = typer.Option(..., "--email", help="Login e-mail address."),
    tenant: str | None = typer.Option(None, "--tenant", help="Tenant name or id (tenant admin)."),
    operator: bool = typer.Option(False, "--operator", help="A platform operator (all tenants)."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Create a console user: a tenant admin (--tenant) or an operator (--operator)."""

    async def go() -> dict[str, Any]:
        if operator == (tenant is not None):
            raise ValidationError("give exactly one of --tenant or --operator")
        password = _read_password(password_stdin)
        async with unit_of_work() as session:
            user = await create_console_user(
                session,
                email,
                password,
                role="operator" if operator else "tenant_admin",
                tenant_ref=tenant,
            )
            return {
                "id": str(user.id),
                "email": user.email,
                "role": user.role,
                "tenant": None if user.tenant_id is None else str(user.tenant_id),
            }

    out = run(go, as_json)
    emit(out, as_json, lambda: console.print(f"created {out['role']} {out['email']}"))
