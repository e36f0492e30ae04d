"""docker-compose.yml is accepted by Compose's own validator and names the whole stack."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> list[str]:
    # An empty env file: a developer's .env (written by `make run`) must not leak in.
    empty = ROOT / "artifacts" / "empty.env"
    empty.parent.mkdir(exist_ok=True)
    empty.write_text("")
    return [*_compose_binary(), "--env-file", str(empty)]


def _compose_binary() -> list[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed (.ci/run installs it)")


def test_compose_file_validates_and_has_the_stack() -> None:
    env = dict(os.environ, MAAS_SECRET_KEY="validate-only")
    cmd = _compose()
    quiet = subprocess.run(
        [*cmd, "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert quiet.returncode == 0, quiet.stderr
    services = subprocess.run(
        [*cmd, "config", "--services"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    names = set(services.stdout.split())
    assert {"postgres", "redis", "triton", "gateway", "rollup", "otel-collector", "jaeger"} <= names
    full = subprocess.run([*cmd, "config"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "--workers" in full.stdout


def test_compose_refuses_to_run_without_a_secret_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MAAS_SECRET_KEY"}
    result = subprocess.run(
        [*_compose(), "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "MAAS_SECRET_KEY" in result.stderr
