"""compose.yaml and the worker image checked by a real Compose implementation (Debian's docker-compose)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app import tracing
from app.settings import PREFIX, Settings
from deploy.localstack.compose_tool import ensure_compose_tool

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
IMAGE_FILES = (ROOT / "deploy" / "Dockerfile", ROOT / "deploy" / "docker-entrypoint.sh")
SETTING_NAMES = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
INFRASTRUCTURE = ("kafka", "redis", "postgres")

# each one breaks a different rule of the Compose Specification, so the validator is shown to say no
BROKEN = {
    "unknown top-level key": "services:\n  a:\n    image: busybox\nbogus: 1\n",
    "ports not a list": "services:\n  a:\n    image: busybox\n    ports: 6066\n",
    "depends on an undefined service": (
        "services:\n  a:\n    image: busybox\n    depends_on:\n      b:\n        condition: service_healthy\n"
    ),
}


@pytest.fixture(scope="module")
def compose_tool() -> str:
    # no skip when it is missing: ensure_compose_tool installs it, or the test fails with the reason
    return ensure_compose_tool()


# what a user puts in .env (compose.yaml requires it: authentication is on)
SECRET = {"SOMA_JWT_SECRET": "compose-test-secret-of-32-bytes-or-more", "GRAFANA_ADMIN_PASSWORD": "compose-test"}


def compose(tool: str, path: Path, *args: str, extra: dict[str, str] = SECRET) -> subprocess.CompletedProcess[str]:
    # COMPOSE_* variables of the caller's shell (project name, profiles, files) must not change the verdict
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "SOMA_", "OTEL_"))} | extra
    return subprocess.run(
        [tool, "--project-directory", str(path.parent), "-f", str(path), "config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def config(compose_tool: str) -> dict[str, Any]:
    """compose.yaml as the tool resolved it (short forms expanded, paths absolute)."""
    result = compose(compose_tool, COMPOSE)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert isinstance(resolved, dict)
    return resolved


def test_tool_is_the_debian_docker_compose(compose_tool: str) -> None:
    result = subprocess.run([compose_tool, "version", "--short"], capture_output=True, text=True, check=True)
    assert result.stdout.strip().startswith("1.29."), result.stdout


def test_compose_file_is_valid(compose_tool: str) -> None:
    result = compose(compose_tool, COMPOSE, "-q")
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    # no `version:` key: docker-compose then validates against its Compose Specification schema
    assert "version" not in yaml.safe_load(COMPOSE.read_text())


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_compose_file_is_rejected(compose_tool: str, tmp_path: Path, name: str) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(BROKEN[name])
    result = compose(compose_tool, broken, "-q")
    assert result.returncode != 0, f"{name}: accepted\n{result.stdout}"
    assert result.stderr.strip(), name


def test_every_service_has_a_healthcheck(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {*INFRASTRUCTURE, "worker", "prometheus", "grafana", "jaeger"}
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert not check.get("disable", False), name
        assert check.get("test", [None])[0] in {"CMD", "CMD-SHELL"}, f"{name}: {check}"


def test_worker_waits_for_healthy_infrastructure(config: dict[str, Any]) -> None:
    depends_on = config["services"]["worker"]["depends_on"]
    assert {name: dep["condition"] for name, dep in depends_on.items()} == dict.fromkeys(
        INFRASTRUCTURE, "service_healthy"
    )


def test_authentication_is_on_and_cannot_start_without_a_secret(compose_tool: str, config: dict[str, Any]) -> None:
    env = config["services"]["worker"]["environment"]
    assert env["SOMA_AUTH_REQUIRED"] == "1" and env["SOMA_JWT_SECRET"] == SECRET["SOMA_JWT_SECRET"]
    refused = compose(compose_tool, COMPOSE, extra={})
    assert refused.returncode != 0 and "set SOMA_JWT_SECRET" in refused.stderr, refused.stderr


def test_worker_settings_are_real_and_valid(config: dict[str, Any]) -> None:
    env = {k: str(v) for k, v in config["services"]["worker"]["environment"].items()}
    soma = {k: v for k, v in env.items() if k.startswith(PREFIX)}
    assert set(soma) <= SETTING_NAMES, f"not settings: {sorted(set(soma) - SETTING_NAMES)}"
    # the worker parses exactly these: values it would reject at start-up fail here instead
    settings = Settings.from_env(soma)
    # a published port reaches the container's interface, never its loopback
    assert ipaddress.ip_address(settings.web_host).is_unspecified
    published = [p for p in config["services"]["worker"]["ports"] if p["target"] == settings.web_port]
    assert published, "SOMA_WEB_PORT is not published"


def test_image_files_name_only_real_settings() -> None:
    for path in IMAGE_FILES:
        named = set(re.findall(r"\bSOMA_[A-Z0-9_]+", path.read_text()))
        assert named <= SETTING_NAMES, f"{path.name}: not settings: {sorted(named - SETTING_NAMES)}"


def test_worker_addresses_are_the_compose_services(config: dict[str, Any]) -> None:
    services = config["services"]
    settings = Settings.from_env(
        {k: str(v) for k, v in services["worker"]["environment"].items() if k.startswith(PREFIX)}
    )
    kafka_env = services["kafka"]["environment"]
    assert f"PLAINTEXT://{settings.kafka_bootstrap}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert urlsplit(settings.redis_url).hostname == "redis"
    dsn = urlsplit(settings.postgres_dsn)
    pg_env = services["postgres"]["environment"]
    assert (dsn.hostname, dsn.username, dsn.password, dsn.path.lstrip("/")) == (
        "postgres",
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    )


def test_every_file_the_services_mount_is_in_the_repository(config: dict[str, Any]) -> None:
    """Prometheus' configuration and rules, Grafana's provisioning and dashboard: bind mounts of real files."""
    # the short syntax "source:target[:mode]" (docker-compose 1.x prints it so); a source path is a bind mount
    sources = [
        str(volume["source"] if isinstance(volume, dict) else volume.split(":")[0])
        for service in config["services"].values()
        for volume in service.get("volumes", [])
    ]
    mounted = [(ROOT / source).resolve() for source in sources if source.startswith(("/", "."))]
    assert {p.relative_to(ROOT).as_posix() for p in mounted} >= {
        "deploy/prometheus/compose-prometheus.yml",
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/provisioning",
        "deploy/grafana/somaagent01.json",
    }
    assert all(p.exists() for p in mounted), [p for p in mounted if not p.exists()]


def test_traces_are_off_unless_an_endpoint_is_given_and_then_reach_jaeger(compose_tool: str) -> None:
    off = compose(compose_tool, COMPOSE)
    on = compose(compose_tool, COMPOSE, extra={**SECRET, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"})
    assert off.returncode == 0 and on.returncode == 0, off.stderr + on.stderr
    worker_off, worker_on = (yaml.safe_load(r.stdout)["services"]["worker"]["environment"] for r in (off, on))
    assert not tracing.wanted({k: str(v or "") for k, v in worker_off.items()})
    assert tracing.wanted({k: str(v) for k, v in worker_on.items()})
    assert worker_on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert yaml.safe_load(on.stdout)["services"]["jaeger"]["profiles"] == ["traces"]
