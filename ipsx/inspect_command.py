"""``ipsx inspect``: run a TLS-inspecting worker beside a gateway node.

mitmproxy is imported only when the command runs, so the other commands do not pay for it.
Also runnable as ``python -m ipsx.inspect_command`` (the same arguments).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from gateway.inspect.settings import InspectSettings
from ipsx import runtime
from ipsx.listen import ListenError
from ipsx.settings import Environment

_HELP = "run a TLS-inspecting port (mitmproxy) that sends decrypted requests on through a gateway"
_DESCRIPTION = (
    "Run the TLS-inspecting port. Requesters who turned inspection on (PUT /v1/inspection) and "
    "installed their account's CA (GET /v1/inspection/ca.pem) use it as their HTTPS proxy, with the "
    "same credentials and targeting as the gateway's; each decrypted request goes on through the "
    "gateway (--gateway), which meters and bills it, and the X-IPSX-Retry-On / X-IPSX-Ban rules apply "
    "to HTTPS too. Never on the gateway's own port. Set IPSX_INSPECT_CA_SECRET (16 characters or "
    "more, the API's too) to keep the accounts' CA keys sealed in PostgreSQL."
)


def _host_port(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text[:60]!r}")
    return host.strip("[]"), int(port)


def add_inspect_command(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``inspect`` subcommand to the ``ipsx`` parser."""
    _add_arguments(sub.add_parser("inspect", help=_HELP, description=_DESCRIPTION))


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8082, help="the inspecting port (default: %(default)s)")
    p.add_argument(
        "--gateway",
        type=_host_port,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="the gateway's HTTP proxy, that decrypted requests go on through (default: 127.0.0.1:8080)",
    )
    p.add_argument(
        "--upstream-ca",
        help="CA bundle (PEM) the origins' certificates are checked with (default: the system's)",
    )
    p.add_argument(
        "--max-request-body",
        type=int,
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="largest request body; bodies are buffered so a retry can send them again "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-response-body",
        type=int,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="largest response body; responses are buffered to apply the rules (default: %(default)s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds an origin may stay silent in a response (default: %(default)s)",
    )
    p.add_argument(
        "--db-pool", type=int, default=2, metavar="N", help="PostgreSQL connections at most (default: 2)"
    )


def _settings(args: argparse.Namespace, env: Environment) -> InspectSettings:
    """The worker's settings from the command line; raises ValueError for ones that cannot work."""
    gateway_host, gateway_port = args.gateway
    return InspectSettings(
        redis_url=env.redis,
        database_url=env.database,
        host=args.host,
        port=args.port,
        gateway_host=gateway_host,
        gateway_port=gateway_port,
        upstream_ca=args.upstream_ca,
        max_request_body=args.max_request_body,
        max_response_body=args.max_response_body,
        idle_timeout=args.idle_timeout,
        db_pool=args.db_pool,
        ca_secret=os.environ.get("IPSX_INSPECT_CA_SECRET") or None,
    )


def _run(settings: InspectSettings, *, verbose: bool) -> None:
    from gateway.inspect.server import run_inspector  # mitmproxy: only for this command

    if not verbose:  # mitmproxy logs every client connection at INFO
        logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    if settings.ca_secret is None:
        logging.getLogger("ipsx.inspect").warning(
            "IPSX_INSPECT_CA_SECRET is not set: accounts' CA keys are stored unsealed in PostgreSQL"
        )
    runtime.run(lambda stop: run_inspector(settings, stop))


def cmd_inspect(args: argparse.Namespace, env: Environment) -> None:
    """``ipsx inspect``: run the worker until SIGINT/SIGTERM."""
    from ipsx.commands import UsageError

    try:
        settings = _settings(args, env)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        _run(settings, verbose=args.verbose)
    except ListenError as error:
        raise UsageError(str(error)) from None


def main(argv: list[str] | None = None) -> None:
    """``python -m ipsx.inspect_command [options]``: the same as ``ipsx inspect [options]``."""
    parser = argparse.ArgumentParser(prog="ipsx inspect", description=_DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    runtime.setup_logging(args.verbose)
    try:
        settings = _settings(args, Environment.from_env())
    except ValueError as error:
        print(f"ipsx inspect: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        _run(settings, verbose=args.verbose)
    except ListenError as error:
        print(f"ipsx inspect: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
