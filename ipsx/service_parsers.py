"""The command lines of the long-running services: ``ipsx gateway``, ``ipsx worker`` and
``ipsx api``, with the options they share (the metrics port, the database pool); the chain
services' parsers (:mod:`ipsx.chain_parsers`) use the database pool option too.

Timeouts, intervals, counts and ports are parsed by :func:`positive_seconds`,
:func:`positive_int` and :func:`ipsx.listen.port_number`, which the other command lines use too: a 0 or
negative timeout or interval would cut every client or spin without waiting, so argparse
refuses it.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from dashboard.remote import parse_network
from ipsx.listen import port_number
from ipsx.reseller_commands import parse_reseller_port


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 (``0.5``, ``30``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text[:40]!r}")
    return value


def trusted_proxy(text: str) -> str:
    """An argparse type: a proxy's address or network (``10.0.0.7``, ``10.0.0.0/8``), kept as written."""
    try:
        parse_network(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.strip()


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text[:40]!r}")
    return value


def add_gateway_command(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``gateway`` to the ``ipsx`` parser."""
    p = sub.add_parser(
        "gateway",
        help="run a gateway node (HTTP/SOCKS5 proxy + provider tunnel endpoint)",
        description="Run a gateway node. Requesters connect to the HTTP and SOCKS5 ports; "
        "provider agents dial in to the tunnel port.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address for the proxy ports (default: %(default)s)")
    p.add_argument(
        "--http-port", type=port_number, default=8080, help="HTTP proxy port (default: %(default)s)"
    )
    p.add_argument("--socks-port", type=port_number, default=1080, help="SOCKS5 port (default: %(default)s)")
    p.add_argument("--tunnel-host", default="127.0.0.1", help="address agents dial (default: %(default)s)")
    p.add_argument(
        "--tunnel-port", type=port_number, default=8443, help="port agents dial (default: %(default)s)"
    )
    p.add_argument("--node-id", help="this node's id in the pool (default: host-pid-random)")
    p.add_argument(
        "--handshake-timeout",
        type=positive_seconds,
        default=10.0,
        help="seconds a client has to send its request head or SOCKS5 handshake (default: %(default)s)",
    )
    p.add_argument("--tunnel-cert", help="PEM certificate chain for the tunnel port: agents connect with TLS")
    p.add_argument("--tunnel-key", help="private key of --tunnel-cert (PEM)")
    p.add_argument(
        "--advertise-host",
        help="host agents are told to dial for this node's tunnel port "
        "(default: --tunnel-host, or the host they already dialed if that is 0.0.0.0)",
    )
    p.add_argument(
        "--region",
        default="",
        help="this node's region, announced to agents: those started with --gateway-region keep "
        "tunnels to the nodes of their region only (default: none)",
    )
    p.add_argument(
        "--drain-timeout",
        type=positive_seconds,
        default=30.0,
        help="on SIGTERM/SIGINT, seconds the streams in flight get to finish before they are cut "
        "(default: %(default)s); new clients are refused meanwhile",
    )
    p.add_argument(
        "--market",
        action="store_true",
        help="route each requester only through the exits of its active deals, asking the market "
        "(run by `ipsx api`) for spot deals when it has none; without it any matching exit serves",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="gateway processes on this host (default: %(default)s). They share the HTTP and SOCKS5 "
        "ports (SO_REUSEPORT); worker i is node NODE-ID-i with its tunnel port at --tunnel-port + i, "
        "and agents that reach one of them open tunnels to all",
    )
    p.add_argument(
        "--reseller-port",
        action="append",
        type=parse_reseller_port,
        default=[],
        metavar="RESELLER=PORT",
        help="a white-label listener (HTTP and SOCKS5, on --host) where RESELLER's sub-users, and only "
        "they, authenticate, under its brand; repeatable",
    )
    _add_metrics(p, "9108", "each further --workers process uses the next port")
    add_db_pool(p, 4, per="each gateway process")


def add_worker_command(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``worker`` to the ``ipsx`` parser."""
    worker = sub.add_parser(
        "worker",
        help="run a billing worker (usage stream → PostgreSQL)",
        description="Ingest the usage stream into PostgreSQL, each event exactly once. Run as many "
        "as you like: they share the stream as one consumer group, and each claims the entries a "
        "dead worker read but never confirmed.",
    )
    worker.add_argument("--consumer", help="this worker's name in the consumer group (default: HOSTNAME-PID)")
    worker.add_argument(
        "--claim-idle",
        type=positive_seconds,
        default=60.0,
        help="seconds an entry read by another worker may stay unconfirmed before this one takes "
        "it over (default: %(default)s)",
    )
    worker.add_argument(
        "--batch", type=positive_int, default=500, help="stream entries per read (default: %(default)s)"
    )
    _add_metrics(worker, "9109")
    add_db_pool(worker, 2)


def add_api_command(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``api`` to the ``ipsx`` parser."""
    api = sub.add_parser(
        "api",
        help="run the REST API (sign-in with Ethereum, keys, balances, usage, ledger)",
        description="Serve the REST API; its OpenAPI document is at /openapi.json. Session tokens "
        "are signed with IPSX_JWT_SECRET (at least 32 bytes; required). IPSX_INSPECT_CA_SECRET (16 "
        "characters or more, the inspecting nodes' too) seals the TLS-inspection CA keys it makes.",
    )
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    api.add_argument("--port", type=port_number, default=8000, help="port (default: %(default)s)")
    api.add_argument(
        "--siwe-domain",
        help="the domain sign-in messages must name: the host:port users reach the API at "
        "(default: HOST:PORT)",
    )
    api.add_argument(
        "--chain-id", type=positive_int, default=1, help="chain sign-in messages must name (default: 1)"
    )
    api.add_argument(
        "--advertise-url",
        help="where the other API nodes reach this one: one node runs the market and the others "
        "forward market calls to it (default: http://HOST:PORT, the machine's name for 0.0.0.0)",
    )
    api.add_argument(
        "--spot-duration",
        type=positive_int,
        default=600,
        help="seconds a spot deal (traffic without an order) lasts (default: %(default)s)",
    )
    api.add_argument(
        "--spot-traffic-gb",
        type=positive_int,
        default=1,
        help="GB a spot deal may carry; its reserve is this at the offer's price (default: %(default)s)",
    )
    api.add_argument(
        "--channels-address",
        help="the PaymentChannels contract (on --chain-id) whose balance proofs pay invoices "
        "(default: none, no channel payments)",
    )
    api.add_argument(
        "--unpaid-limit",
        default="1",
        help="IPSX of settled usage a channel-funded requester may owe before the gateways answer "
        "402 (default: %(default)s)",
    )
    api.add_argument(
        "--consent-ttl",
        type=positive_int,
        default=3600,
        metavar="SECONDS",
        help="how long the operator's consent to close a requester's channel lasts; the channel is "
        "frozen, nothing more billed on it, until then (default: %(default)s)",
    )
    api.add_argument(
        "--invoice-interval",
        type=positive_seconds,
        default=2.0,
        help="seconds between invoicing passes (default: 2)",
    )
    api.add_argument(
        "--proxy-address",
        default="127.0.0.1:8080",
        help="the gateway's HTTP proxy as browsers reach it, HOST:PORT: what the orders' PAC files "
        "name (default: %(default)s)",
    )
    api.add_argument(
        "--socks-address",
        default="127.0.0.1:1080",
        help="the gateway's SOCKS5 port as users reach it, HOST:PORT, shown by the dashboard's proxy "
        "URL builder (default: %(default)s)",
    )
    api.add_argument(
        "--public-url",
        help="where users reach this API and dashboard, e.g. https://dash.example.com: the base of "
        "the PAC URLs the pages show; with https the session cookie is Secure (default: the URL "
        "each request came in on)",
    )
    api.add_argument(
        "--web-signin-limit",
        type=positive_int,
        default=10,
        metavar="N",
        help="dashboard sign-in attempts one client address may make per minute (default: %(default)s)",
    )
    api.add_argument(
        "--auth-nonce-limit",
        type=positive_int,
        default=60,
        metavar="N",
        help="sign-in nonces (POST /v1/auth/nonce, the dashboard's wallet message) one client address "
        "may ask for per minute (default: %(default)s)",
    )
    api.add_argument(
        "--auth-siwe-limit",
        type=positive_int,
        default=60,
        metavar="N",
        help="sign-in attempts (POST /v1/auth/siwe) one client address may make per minute "
        "(default: %(default)s)",
    )
    api.add_argument(
        "--trusted-proxy",
        type=trusted_proxy,
        action="append",
        default=[],
        metavar="CIDR",
        help="a reverse proxy or load balancer of yours in front of the API (an address or a network; "
        "repeat for more): a request from it counts against the client its X-Forwarded-For names, "
        "for the per-address sign-in limits (default: none, every client is the connection's peer)",
    )
    api.add_argument(
        "--web-live-interval",
        type=positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="how often the dashboard's live view pushes the caller's totals (default: %(default)s)",
    )
    api.add_argument(
        "--web-demo-account",
        metavar="NAME",
        help="offer a one-click dashboard login as this account: for demos only, since anyone "
        "who reaches the dashboard may then act as it",
    )
    add_db_pool(api, 10)


def _add_metrics(parser: argparse.ArgumentParser, example: str, extra: str = "") -> None:
    """Add ``--metrics-port`` (``example`` a port to suggest, ``extra`` a note) and ``--metrics-host``."""
    parser.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help=f"serve Prometheus /metrics, /healthz and /readyz on this port (e.g. {example}; default: "
        f"off){'; ' + extra if extra else ''}. Unauthenticated: keep --metrics-host private",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (default: %(default)s)"
    )


def add_db_pool(parser: argparse.ArgumentParser, default: int, *, per: str = "this process") -> None:
    """Add ``--db-pool``: the connections ``per`` (the process, by default) keeps, ``default``
    when not given."""
    parser.add_argument(
        "--db-pool",
        type=positive_int,
        default=default,
        metavar="N",
        help=f"PostgreSQL connections {per} keeps at most (default: %(default)s). Keep the sum "
        "over all processes below the server's max_connections",
    )
