"""``maas``: the operator's command line. Domain command groups live with their packages."""

from __future__ import annotations

import json

import typer

from billing.cli import usage_app
from billing.close_cli import billing_app
from gateway.telemetry_cli import telemetry_app
from tenants.cli import keys_app, models_app, plans_app, tenants_app
from tenants.cli_support import console, err_console, fail
from tenants.console_cli import console_users_app
from tenants.settings import get_settings

app = typer.Typer(help="Metered model-as-a-service gateway.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(plans_app, name="plans")
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(usage_app, name="usage")
app.add_typer(billing_app, name="billing")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(console_users_app, name="console-users")


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Argument("head"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Apply Alembic migrations (creates the default plans on first run)."""
    import migrations

    url = get_settings().database_url
    try:
        migrations.upgrade(url, revision)
    except (OSError, ConnectionError) as exc:
        raise fail(f"database unreachable: {exc}", "database_unreachable", as_json) from None
    except Exception as exc:
        if "connect" in str(exc).lower() or "does not exist" in str(exc):
            raise fail(f"database unreachable: {exc}", "database_unreachable", as_json) from None
        raise
    if as_json:
        print(json.dumps({"revision": migrations.current_head(url)}))
    else:
        console.print(f"database at revision {migrations.current_head(url)}")


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    workers: int = typer.Option(1, "--workers", min=1),
    log_level: str = typer.Option("warning", "--log-level"),
) -> None:
    """Serve the gateway (HTTP) with uvicorn; each worker keeps its own gRPC channel."""
    from gateway import grpc_env

    grpc_env.apply()  # before the app, and grpc with it, is imported
    import uvicorn

    settings = get_settings()
    problem = settings.secret_key_problem()
    if problem and not settings.allow_insecure_secret_key:
        raise fail(
            f"{problem}; set a random MAAS_SECRET_KEY (for local development only, "
            "MAAS_ALLOW_INSECURE_SECRET_KEY=true accepts it)",
            "insecure_secret_key",
            False,
        )
    if problem:
        err_console.print(f"[bold red]WARNING:[/] {problem}; API keys are not protected")

    uvicorn.run(
        "gateway.app:create_serving_app",
        factory=True,
        http="gateway.http_protocol:OneWriteHttpToolsProtocol",
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
        log_config=None,  # the gateway configures logging itself (structured)
        # SIGTERM: stop accepting, let in-flight requests finish (and be metered), then run the
        # app's shutdown (meter buffer replayed or left on disk); cut off after this grace.
        timeout_graceful_shutdown=max(1, round(get_settings().shutdown_grace_s)),
        # A worker answers the supervisor's ping only once its imports are done; on a busy host
        # that takes longer than uvicorn's 5 s, and a slow starter would be killed and respawned.
        timeout_worker_healthcheck=60,
    )


@app.command("demo-model")
def demo_model(
    grpc_port: int = typer.Option(8001, "--grpc-port"),
    http_port: int = typer.Option(8010, "--http-port"),
    metrics_port: int = typer.Option(8012, "--metrics-port"),
) -> None:
    """Start a real Triton (CPU, via PyTriton) serving the demo models until interrupted."""
    from gateway.demo_models import demo_bindings
    from gateway.pytriton_host import serve as serve_triton

    serve_triton(
        demo_bindings(),
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        access_token=get_settings().triton_access_token,
    )


if __name__ == "__main__":
    app()
