"""The inspecting worker's settings and its command line (``ipsx inspect``)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from gateway.inspect.settings import InspectSettings
from ipsx import inspect_command
from ipsx.settings import Environment

ENV = Environment(redis_url="redis://127.0.0.1:6379/4", database_url="postgresql://127.0.0.1/x")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ipsx")
    sub: argparse._SubParsersAction[Any] = parser.add_subparsers(dest="command", required=True)
    inspect_command.add_inspect_command(sub)
    return parser.parse_args(["inspect", *argv])


def test_add_inspect_command_call_defaults() -> None:
    args = _parse()
    settings = inspect_command._settings(args, ENV)
    assert args.command == "inspect"
    assert (settings.host, settings.port) == ("127.0.0.1", 8082)
    assert (settings.gateway_host, settings.gateway_port) == ("127.0.0.1", 8080)
    assert settings.upstream_ca is None
    assert "postgresql" not in repr(settings)  # the database URL may carry a password


def test_add_inspect_command_call_options() -> None:
    args = _parse(
        "--port",
        "9000",
        "--gateway",
        "[::1]:8081",
        "--upstream-ca",
        "/tmp/ca.pem",
        "--max-response-body",
        "1024",
    )
    settings = inspect_command._settings(args, ENV)
    assert (settings.port, settings.gateway_host, settings.gateway_port) == (9000, "::1", 8081)
    assert (settings.upstream_ca, settings.max_response_body) == ("/tmp/ca.pem", 1024)


@pytest.mark.parametrize("gateway", ["gw", "gw:", "gw:0", "gw:65536", ":8080", "gw:http"])
def test_add_inspect_command_call_refuses_bad_gateways(
    gateway: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parse("--gateway", gateway)
    assert "HOST:PORT" in capsys.readouterr().err


def test_cmd_inspect_call_refuses_the_gateways_port() -> None:
    from ipsx.commands import UsageError

    with pytest.raises(UsageError) as raised:
        inspect_command.cmd_inspect(_parse("--port", "8080"), ENV)
    assert "gateway's port" in str(raised.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"port": 8080},  # the gateway's own port: never
        {"port": 70000},
        {"gateway_port": 0},
        {"max_response_body": -1},
        {"idle_timeout": 0},
        {"db_pool": 0},
    ],
)
def test_inspect_settings_refuse_what_cannot_work(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        InspectSettings(redis_url="redis://x", database_url="postgresql://x", **overrides)
