"""docker/: the image and the compose file stay true to the code the tests run.

No Docker engine runs here, so nothing is built or started; instead the compose file is
validated by ``docker-compose config`` (Debian's docker-compose, which .ci/run installs), and
every IPSX service's command is parsed by the real ``ipsx`` command line, so a renamed flag or
subcommand fails here rather than in a deployment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipsx.cli import build_parser

DOCKER = Path(__file__).resolve().parent.parent / "docker"
REPO = DOCKER.parent
ENV = {"POSTGRES_PASSWORD": "example-password", "IPSX_JWT_SECRET": "x" * 40}


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = (
        subprocess.run(["docker", "compose", "version"], capture_output=True)
        if shutil.which("docker")
        else None
    )
    if probe is not None and probe.returncode == 0:
        return ["docker", "compose"]
    pytest.fail(
        "neither docker-compose nor the docker compose plugin is installed (apt-get install docker-compose)"
    )


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ENV}
    return subprocess.run(
        [*_compose_command(), "-f", str(DOCKER / "compose.yaml"), "config"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as ``docker-compose config`` resolves it (anchors merged, variables set)."""
    result = _config(ENV)
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def _ipsx_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in compose["services"].items() if spec.get("image") == "ipsx:latest"}


def test_compose_config_is_valid_and_requires_its_secrets(compose: dict[str, Any]) -> None:
    assert {"postgres", "redis", "anvil", "migrate", "balancer", "api", "worker", "provider"} <= set(
        compose["services"]
    )
    missing = _config({"IPSX_JWT_SECRET": "x" * 40})
    assert missing.returncode != 0
    assert "set POSTGRES_PASSWORD" in missing.stderr


def test_every_ipsx_command_parses_with_the_real_command_line(compose: dict[str, Any]) -> None:
    parser = build_parser()
    roles = {}
    for name, spec in _ipsx_services(compose).items():
        args = parser.parse_args([str(word) for word in spec["command"]])
        roles[name] = args.command
    assert roles == {
        "migrate": "migrate",
        "gateway-1": "gateway",
        "gateway-2": "gateway",
        "gateway-3": "gateway",
        "api": "api",
        "worker": "worker",
        "provider": "provide",
    }


def test_gateway_nodes_are_distinct_reachable_and_behind_the_balancer(compose: dict[str, Any]) -> None:
    parser = build_parser()
    gateways = {name: spec for name, spec in _ipsx_services(compose).items() if name.startswith("gateway-")}
    for name, spec in gateways.items():
        args = parser.parse_args([str(word) for word in spec["command"]])
        assert args.node_id == name
        assert args.advertise_host == name  # agents dial every node by its service name
        assert args.host == args.tunnel_host == "0.0.0.0"
        assert spec["environment"]["IPSX_REDIS_URL"].startswith("redis://redis:")
        assert spec["stop_grace_period"] in ("40s", "40.0s")  # longer than the 30 s drain
    balanced = re.findall(r"^\s+server (\S+) (\S+):(\d+)", (DOCKER / "haproxy.cfg").read_text(), re.M)
    assert {(name, host) for name, host, _ in balanced} == {(name, name) for name in gateways}
    assert {int(port) for _, _, port in balanced} == {8080, 1080}
    provider = parser.parse_args([str(word) for word in compose["services"]["provider"]["command"]])
    assert provider.gateway == "gateway-1:8443"


def test_database_connections_fit_the_server(compose: dict[str, Any]) -> None:
    parser = build_parser()
    total = 0
    for spec in _ipsx_services(compose).values():
        args = parser.parse_args([str(word) for word in spec["command"]])
        if hasattr(args, "db_pool"):
            total += args.db_pool * spec.get("deploy", {}).get("replicas", 1) * getattr(args, "workers", 1)
    command = compose["services"]["postgres"]["command"]
    max_connections = int(next(item.split("=")[1] for item in command if item.startswith("max_connections=")))
    assert 0 < total < max_connections


def test_environment_names_are_the_ones_the_code_reads(compose: dict[str, Any]) -> None:
    source = "\n".join(
        path.read_text()
        for folder in ("ipsx", "gateway", "billing", "dashboard")
        for path in (REPO / folder).rglob("*.py")
    )
    names = {
        key
        for spec in _ipsx_services(compose).values()
        for key in (spec.get("environment") or {})
        if key.startswith("IPSX_")
    }
    assert {"IPSX_REDIS_URL", "IPSX_DATABASE_URL", "IPSX_JWT_SECRET", "IPSX_HEALTHCHECK"} <= names
    for name in names:
        assert f'"{name}"' in source, f"{name} is set in compose.yaml but read nowhere"


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        if spec["image"] == "ipsx:latest":
            continue  # built here from docker/Dockerfile
        repository, _, tag = spec["image"].rpartition(":")
        assert repository and re.match(r"\d+\.\d+", tag), f"{name}: {spec['image']} is not pinned"


def test_dockerfile_is_multi_stage_unprivileged_pinned_and_complete() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base is not None and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1))
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user == ["ipsx"]
    assert re.search(r"^HEALTHCHECK .*CMD \[\"ipsx\", \"health\"\]$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["ipsx"\]$', text, re.M)
    # Every package the distribution ships is copied into the build.
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))
    assert copied == {pattern.rstrip("*") for pattern in packages["include"]}
