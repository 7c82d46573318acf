"""The ``ipsx`` command line: one subcommand per long-running part, plus admin commands."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ipsx import health, runtime
from ipsx.client_commands import add_client_commands
from ipsx.devchain import add_devchain_parser
from ipsx.inspect_command import add_inspect_command
from ipsx.reseller_commands import add_reseller_commands, parse_reseller_port
from ipsx.settings import Environment

DESCRIPTION = """\
IPSX, the IP Sharing Exchange: a rotating proxy gateway whose exits are lent by providers.

Quick start:  ipsx demo             (everything on this machine, nothing to install)
Production:   ipsx gateway | ipsx worker | ipsx provide, configured by
              IPSX_REDIS_URL and IPSX_DATABASE_URL.
"""


def _add_gateway(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "gateway",
        help="run a gateway node (HTTP/SOCKS5 proxy + provider tunnel endpoint)",
        description="Run a gateway node. Requesters connect to the HTTP and SOCKS5 ports; "
        "provider agents dial in to the tunnel port.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address for the proxy ports (default: %(default)s)")
    p.add_argument("--http-port", type=int, default=8080, help="HTTP proxy port (default: %(default)s)")
    p.add_argument("--socks-port", type=int, default=1080, help="SOCKS5 port (default: %(default)s)")
    p.add_argument("--tunnel-host", default="127.0.0.1", help="address agents dial (default: %(default)s)")
    p.add_argument("--tunnel-port", type=int, default=8443, help="port agents dial (default: %(default)s)")
    p.add_argument("--node-id", help="this node's id in the pool (default: host-pid-random)")
    p.add_argument(
        "--handshake-timeout",
        type=float,
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
        type=float,
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
        type=int,
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
    _add_db_pool(p, 4, per="each gateway process")


def _add_metrics(parser: argparse.ArgumentParser, example: str, extra: str = "") -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help=f"serve Prometheus /metrics, /healthz and /readyz on this port (e.g. {example}; default: "
        f"off){'; ' + extra if extra else ''}. Unauthenticated: keep --metrics-host private",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (default: %(default)s)"
    )


def _add_db_pool(parser: argparse.ArgumentParser, default: int, *, per: str = "this process") -> None:
    parser.add_argument(
        "--db-pool",
        type=int,
        default=default,
        metavar="N",
        help=f"PostgreSQL connections {per} keeps at most (default: %(default)s). Keep the sum "
        "over all processes below the server's max_connections",
    )


PROVIDE_EPILOG = """\
Examples:
  ipsx provide --key wallet.key --gateway gw.example:8443 \\
      --bind 203.0.113.7,country=fr,type=datacenter
  ipsx provide --key wallet.key --gateway gw.example:8443 --cap-day 5GB --cap-month 100 \\
      --rate-total 20 --hours 22:00-07:00 --tz Europe/Paris --protocols https,socks5 \\
      --block example.com,10.0.0.0/8
  ipsx provide status --key wallet.key
      what the agent served today and this month, its caps and hours, what it earned

Sizes are decimal: a plain number is GB; 500MB, 1.5GB, 2TB and 2GiB also work. Rates are per
second: a plain number is Mbit/s; 500kbit and 1Gbit also work. Caps count both directions and
start afresh at local midnight (and on the 1st); the counts are kept in KEYFILE.usage.json
(next to the key, or in --state-dir), so restarting the agent does not reset them. A stream
that reaches a cap ends there; the agent tells the gateway it is not serving until the cap
resets or its --hours open again, and the gateway does not send it streams meanwhile.
"""


def _add_provide(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "provide",
        help="share this machine's IP addresses as exits (`ipsx provide status`: what it served)",
        description="Run a provider agent. It only dials out (no inbound port needed), logs in\n"
        "with your wallet, and relays streams from the exits you declare, within the caps,\n"
        "bandwidth, hours, protocols and destinations you allow.",
        epilog=PROVIDE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("run", "status"),
        default="run",
        help="run: serve (the default); status: show what the agent with this --key served today "
        "and this month (bytes, streams, per deal), its caps, hours and whether it serves now, and "
        "what it earned when it keeps payout proofs (--payouts-api)",
    )
    p.add_argument(
        "--key",
        required=True,
        type=Path,
        help="wallet: a file with a hex private key, or an encrypted keystore JSON "
        "(password from IPSX_KEY_PASSWORD)",
    )
    p.add_argument(
        "--gateway",
        help="the gateway's tunnel endpoint: HOST:PORT, or tls://HOST:PORT when it has --tunnel-cert "
        "(required to serve)",
    )
    p.add_argument(
        "--gateway-ca", help="CA bundle that signed the gateway's certificate (default: the system's)"
    )
    p.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="ADDRESS[,key=value...]",
        help="an exit: a local source address, optionally with its own attributes "
        "(country, region, city, asn, type). Repeat for several. Default: the host's address",
    )
    p.add_argument(
        "--country", default="us", help="ISO 3166-1 alpha-2 country of the exits (default: %(default)s)"
    )
    p.add_argument("--region", default="", help="region of the exits")
    p.add_argument("--city", default="", help="city of the exits")
    p.add_argument("--asn", type=int, default=0, help="autonomous system number of the exits")
    p.add_argument(
        "--type",
        default="residential",
        choices=["residential", "mobile", "datacenter"],
        help="kind of IP (default: %(default)s)",
    )
    p.add_argument("--ports", help="destination ports allowed, e.g. 80,443,8000-8100 (default: all but mail)")
    p.add_argument(
        "--protocols",
        metavar="LIST",
        help="the stream protocols served, of http (plain HTTP requests), https (CONNECT tunnels) and "
        "socks5, e.g. https,socks5 (default: all)",
    )
    p.add_argument(
        "--block",
        action="append",
        default=[],
        metavar="LIST",
        help="destinations refused: domains (example.com also blocks every name under it) and "
        "networks or addresses (10.0.0.0/8, 192.0.2.7, 2001:db8::/32; checked on the address a "
        "name resolves to). Comma-separated; repeat for more",
    )
    limits = p.add_argument_group(
        "caps, bandwidth and hours (enforced by the agent, advertised to the gateway)"
    )
    limits.add_argument(
        "--cap-day",
        metavar="SIZE",
        help="data served per local day at most, up and down together: GB, or with a unit (500MB)",
    )
    limits.add_argument(
        "--cap-month", metavar="SIZE", help="data served per calendar month at most (as --cap-day)"
    )
    limits.add_argument(
        "--rate-stream", metavar="RATE", help="bandwidth per stream at most: Mbit/s, or with a unit (500kbit)"
    )
    limits.add_argument(
        "--rate-total", metavar="RATE", help="bandwidth of all streams together at most (as --rate-stream)"
    )
    limits.add_argument(
        "--hours",
        action="append",
        default=[],
        metavar="HH:MM-HH:MM",
        help="serve only in this local time window, e.g. 22:00-07:00 (crossing midnight is fine). "
        "Repeat, or separate with commas, for several (default: all day)",
    )
    limits.add_argument(
        "--tz",
        metavar="ZONE",
        help="the time zone of --hours and of the caps' days and months, e.g. Europe/Paris "
        "(default: this machine's)",
    )
    limits.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where the agent keeps KEYFILE.usage.json, its usage counted against the caps "
        "(default: the folder of --key)",
    )
    p.add_argument("--allow-smtp", action="store_true", help="also allow mail ports (25, 465, 587, 2525)")
    p.add_argument(
        "--allow-private",
        action="store_true",
        help="also allow loopback/private/link-local destinations (tests and demos only)",
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=16,
        help="idle data connections kept open to the gateway (default: %(default)s)",
    )
    p.add_argument(
        "--gateway-region",
        help="keep tunnels only to the gateway nodes of this region (their --region); "
        "default: to every live node",
    )
    p.add_argument(
        "--payouts-api",
        help="the IPSX API: check and keep, every --payouts-interval, the payout proofs the hub signs "
        "for your earnings (as `ipsx payouts` does; default: not checked)",
    )
    p.add_argument(
        "--payouts-store",
        type=Path,
        default=Path(".ipsx/payouts.json"),
        help="where the payout proofs are kept (default: %(default)s)",
    )
    p.add_argument(
        "--payouts-interval", type=float, default=30.0, help="seconds between payout checks (default: 30)"
    )


CHAIN_KEY_HELP = (
    "operator wallet: a file with a hex private key, or an encrypted keystore JSON (password from "
    "IPSX_KEY_PASSWORD). Default: the hex private key in IPSX_OPERATOR_KEY. Never pass a key itself"
)


def _chain_parents() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser, argparse.ArgumentParser]:
    """The options the chain commands share: the node, the deployment file, the operator key."""
    rpc = argparse.ArgumentParser(add_help=False)
    rpc.add_argument(
        "--rpc",
        metavar="URL",
        help="the Ethereum node's JSON-RPC URL (default: $IPSX_RPC_URL, else http://127.0.0.1:8545)",
    )
    deployment = argparse.ArgumentParser(add_help=False)
    deployment.add_argument(
        "--deployment",
        type=Path,
        default=Path(".ipsx/chain.json"),
        metavar="FILE",
        help="the file `ipsx chain deploy` wrote (default: %(default)s)",
    )
    key = argparse.ArgumentParser(add_help=False)
    key.add_argument("--key", type=Path, metavar="FILE", help=CHAIN_KEY_HELP)
    return rpc, deployment, key


def _add_chain(sub: argparse._SubParsersAction[Any]) -> None:
    rpc, deployment, key = _chain_parents()
    chain = sub.add_parser(
        "chain",
        help="operator: deploy the IPSX contracts and follow the payment channels on-chain",
        description="Deploy the IPSX token, sale, payment channels and deal anchor contracts, and "
        "run the chain watcher that turns confirmed channel events into ledger deposits.",
    )
    actions = chain.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = actions.add_parser(
        "deploy",
        parents=[rpc, key],
        help="deploy the four contracts and record their addresses",
        description="Deploy TokenSale (which creates IPSXToken), PaymentChannels and DealAnchor from "
        "the operator's wallet, print each contract as it is mined, and write the addresses, the "
        "chain id and the deployment block to --out for `ipsx chain watch` and `ipsx reconcile`. "
        "Every address option defaults to the operator, which suits a test network: the operator "
        "then holds the early-adopters and bounty pools, the only holders (with the sale) that may "
        "transfer IPSX before the sale is finalized.",
        epilog="Example: IPSX_OPERATOR_KEY=0x... ipsx chain deploy --rpc http://127.0.0.1:8545",
    )
    d.add_argument(
        "--out",
        type=Path,
        default=Path(".ipsx/chain.json"),
        metavar="FILE",
        help="where to record the deployment (default: %(default)s); an existing file is kept unless --force",
    )
    d.add_argument("--force", action="store_true", help="replace an existing --out file")
    d.add_argument(
        "--challenge-period",
        type=int,
        metavar="SECONDS",
        help="how long an uncooperative channel close can be challenged (default: 86400, 24 h)",
    )
    d.add_argument(
        "--operator",
        metavar="ADDRESS",
        help="the hub: receiver of requester channels and owner of DealAnchor (default: the key's address)",
    )
    for flag, what in (
        ("--early-adopters", "holder of the 27.5 %% early adopters and strategic partners allocation"),
        ("--bounty", "holder of the 2.5 %% bounty campaign allocation"),
        ("--team", "holder of the 20 %% team allocation (locked until the sale is finalized)"),
        ("--sale-wallet", "the wallet that withdraws the sale's ETH after finalization"),
    ):
        d.add_argument(flag, metavar="ADDRESS", help=f"{what} (default: the operator)")
    d.add_argument(
        "--rate",
        type=int,
        default=5000,
        metavar="N",
        help="IPSX sold per ETH (= base units per wei) (default: %(default)s)",
    )
    d.add_argument(
        "--cap",
        metavar="ETH",
        help="ETH the sale raises at most (default: enough to sell all 900,000,000 IPSX at --rate)",
    )
    d.add_argument(
        "--sale-start",
        type=int,
        metavar="UNIX_TIME",
        help="the sale opens (default: the latest block's time)",
    )
    d.add_argument(
        "--sale-duration",
        type=int,
        default=30 * 86400,
        metavar="SECONDS",
        help="the sale closes this long after it opens (default: %(default)s, 30 days); "
        "transfers unlock when it is finalized after that",
    )

    w = actions.add_parser(
        "watch",
        parents=[rpc, deployment, key],
        help="run the chain watcher (deposits into the ledger, stale closes countered)",
        description="Follow the deployment's PaymentChannels contract from its deployment block: "
        "each confirmed event updates the channels table and the ledger (a requester's deposit is "
        "credited to its account), and an uncooperative close below the balance proof held is "
        "countered from the operator's wallet. Runs until SIGINT/SIGTERM. Exits with status 3 "
        "when the chain was reorganised deeper than the confirmations (check with `ipsx reconcile`). "
        "The database is IPSX_DATABASE_URL.",
    )
    w.add_argument(
        "--confirmations",
        type=int,
        default=6,
        metavar="N",
        help="blocks on top of an event's block before it is applied (default: %(default)s)",
    )
    w.add_argument(
        "--poll",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between polls (default: %(default)s)",
    )
    _add_db_pool(w, 2)

    a = actions.add_parser(
        "anchor",
        parents=[rpc, deployment, key],
        help="anchor settled deals on-chain: batches of records, their Merkle roots posted to DealAnchor",
        description="Every --interval, put up to --max-batch settled deals not anchored yet in a batch, "
        "post its Merkle root to the deployment's DealAnchor from the operator's wallet (its owner) and "
        "record the batch once the transaction is --confirmations deep; the API then serves each "
        "deal's inclusion proof (`ipsx verify DEAL`). A batch interrupted by a crash is finished "
        "first at the next start. Runs until SIGINT/SIGTERM, or once with --once. Exits with "
        "status 3 when the contract's batches and the database's disagree. The database is "
        "IPSX_DATABASE_URL.",
    )
    a.add_argument(
        "--once",
        action="store_true",
        help="anchor one batch (if any deal waits), wait for its confirmations and exit",
    )
    a.add_argument(
        "--confirmations",
        type=int,
        default=6,
        metavar="N",
        help="blocks on top of the anchor transaction's before its batch counts and its proofs are "
        "served; a reorganisation shallower than that makes the batch be posted again "
        "(default: %(default)s; 0 on a local development chain)",
    )
    a.add_argument(
        "--interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between batches (default: %(default)s)",
    )
    a.add_argument(
        "--max-batch",
        type=int,
        default=1000,
        metavar="N",
        help="deals per batch at most (default: %(default)s)",
    )
    _add_db_pool(a, 2)

    v = sub.add_parser(
        "verify",
        parents=[rpc],
        help="check that a deal's record is anchored on-chain (its inclusion proof, from the API)",
        description="Fetch the deal's anchor proof from the API, recompute its leaf from the record, "
        "check the proof against the batch root off-chain and with DealAnchor.verify on the node, "
        "and print a verdict. Exit status 0 when every check passes, 1 otherwise.",
    )
    v.add_argument("deal", metavar="DEAL", help="the deal id")
    v.add_argument(
        "--api",
        default=os.environ.get("IPSX_API_URL", "http://127.0.0.1:8000"),
        metavar="URL",
        help="API base URL (default: $IPSX_API_URL, else http://127.0.0.1:8000)",
    )
    v.add_argument("--token", help="API key or session token of a party to the deal (default: IPSX_TOKEN)")
    v.add_argument(
        "--deployment",
        type=Path,
        metavar="FILE",
        help="a file `ipsx chain deploy` wrote: its DealAnchor must be the one the API names "
        "(default: trust the API's contract address, checked on the node)",
    )

    r = sub.add_parser(
        "reconcile",
        parents=[rpc, deployment],
        help="operator: check that the ledger and the chain agree to the base unit",
        description="Compare the channels table and the ledger (IPSX_DATABASE_URL) with the chain: "
        "every channel's state, deposits and settlements, the contract's token balance and the "
        "ledger's image of the chain. Prints one line per check; exit status 0 when all agree, 1 on "
        "a mismatch.",
    )
    r.add_argument(
        "--block",
        type=int,
        metavar="N",
        help="read the chain at this block (default: the last block the watcher applied)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsx", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log as text (the default) or as JSON lines with request ids; also IPSX_LOG_FORMAT. "
        "Secrets (keys, passwords, tokens) are redacted either way",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_gateway(sub)
    _add_provide(sub)
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
        type=float,
        default=60.0,
        help="seconds an entry read by another worker may stay unconfirmed before this one takes "
        "it over (default: %(default)s)",
    )
    worker.add_argument(
        "--batch", type=int, default=500, help="stream entries per read (default: %(default)s)"
    )
    _add_metrics(worker, "9109")
    _add_db_pool(worker, 2)
    api = sub.add_parser(
        "api",
        help="run the REST API (sign-in with Ethereum, keys, balances, usage, ledger)",
        description="Serve the REST API; its OpenAPI document is at /openapi.json. Session tokens "
        "are signed with IPSX_JWT_SECRET (at least 32 bytes; required).",
    )
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    api.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    api.add_argument(
        "--siwe-domain",
        help="the domain sign-in messages must name: the host:port users reach the API at "
        "(default: HOST:PORT)",
    )
    api.add_argument("--chain-id", type=int, default=1, help="chain sign-in messages must name (default: 1)")
    api.add_argument(
        "--advertise-url",
        help="where the other API nodes reach this one: one node runs the market and the others "
        "forward market calls to it (default: http://HOST:PORT, the machine's name for 0.0.0.0)",
    )
    api.add_argument(
        "--spot-duration",
        type=int,
        default=600,
        help="seconds a spot deal (traffic without an order) lasts (default: %(default)s)",
    )
    api.add_argument(
        "--spot-traffic-gb",
        type=int,
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
        "--invoice-interval", type=float, default=2.0, help="seconds between invoicing passes (default: 2)"
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
        type=int,
        default=10,
        metavar="N",
        help="dashboard sign-in attempts one client address may make per minute (default: %(default)s)",
    )
    api.add_argument(
        "--web-live-interval",
        type=float,
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
    _add_db_pool(api, 10)
    sub.add_parser("migrate", help="create the database if needed and apply migrations")
    health = sub.add_parser(
        "health",
        help="check that a service is up (exit status 0) or not (1): for container health checks",
        description="tcp://HOST:PORT passes when something accepts connections there (a gateway's "
        "proxy port); http://HOST:PORT/PATH when a GET answers 2xx (the API's /readyz).",
    )
    health.add_argument(
        "target",
        nargs="?",
        default=os.environ.get("IPSX_HEALTHCHECK", "tcp://127.0.0.1:8080"),
        help="what to check (default: $IPSX_HEALTHCHECK, else %(default)s)",
    )
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default: %(default)s)")

    demo = sub.add_parser(
        "demo",
        help="run the whole network on this machine with embedded services",
        description="Start PostgreSQL and Redis (embedded unless IPSX_DATABASE_URL / "
        "IPSX_REDIS_URL are set), a local chain with the IPSX contracts (anvil, installed by make "
        "setup), a gateway, a worker, the API with the market and three demo providers on "
        "127.0.0.2-4; the demo requester pays over a payment channel (on ipsx devchain, the "
        "in-process chain, without anvil). Prints proxy URLs.",
    )
    demo.add_argument(
        "--chain",
        choices=("auto", "anvil", "devchain"),
        default="auto",
        help="the local chain of a new data dir: anvil when installed, else ipsx devchain "
        "(default: %(default)s)",
    )
    demo.add_argument(
        "--data-dir", type=Path, default=Path(".ipsx"), help="state directory (default: %(default)s)"
    )
    demo.add_argument("--http-port", type=int, default=8080, help="HTTP proxy port (default: %(default)s)")
    demo.add_argument("--socks-port", type=int, default=1080, help="SOCKS5 port (default: %(default)s)")
    demo.add_argument(
        "--tunnel-port", type=int, default=8443, help="provider tunnel port (default: %(default)s)"
    )
    demo.add_argument(
        "--origin-port",
        type=int,
        default=18000,
        help="port of the demo page that shows which exit a request left from (default: %(default)s)",
    )
    demo.add_argument("--api-port", type=int, default=8000, help="REST API port (default: %(default)s)")
    demo.add_argument(
        "--once",
        action="store_true",
        help="send one request through each protocol, print the metered usage and exit",
    )

    account = sub.add_parser("account", help="manage accounts").add_subparsers(dest="action", required=True)
    create = account.add_parser("create", help="create an account for a wallet address")
    create.add_argument("--address", required=True, help="the account's Ethereum address")
    create.add_argument("--name", required=True, help="proxy user name: letters, digits, '_' (no '-')")
    account.add_parser("list", help="list accounts")
    credit = account.add_parser("credit", help="operator: credit an account's balance")
    credit.add_argument("name")
    credit.add_argument("amount", help="IPSX, e.g. 100 or 0.5")
    credit.add_argument("--reference", help="idempotency key (default: a new one)")

    key = sub.add_parser("key", help="manage API keys").add_subparsers(dest="action", required=True)
    kcreate = key.add_parser("create", help="create an API key; the secret is shown once")
    kcreate.add_argument("account", help="account name")
    kcreate.add_argument("--label", default="", help="a note for you")
    kcreate.add_argument(
        "--scopes",
        default="proxy,read,trade,keys",
        help="what the key may do, comma-separated: proxy (use the gateways), read, trade (orders), "
        "keys (make sub-keys), withdraw (request withdrawals; never given unless asked for), "
        "operator (decide disputed deals and withdrawals; only this command grants it) "
        "(default: %(default)s)",
    )
    kcreate.add_argument(
        "--spend-limit", help="IPSX the deals opened through this key may cost at most (default: none)"
    )
    kcreate.add_argument(
        "--rules",
        metavar="KEY-VALUE[-KEY-VALUE…]",
        help="standing rules every connection made with this key gets unless its user name or "
        "headers say otherwise, in the user name's grammar: retryon-403,429-maxretries-2, "
        "country-fr-type-mobile, sessttl-300 (default: none)",
    )
    klist = key.add_parser("list", help="list an account's keys")
    klist.add_argument("account")
    krevoke = key.add_parser("revoke", help="revoke a key")
    krevoke.add_argument("key_id")

    add_client_commands(sub)

    add_inspect_command(sub)
    add_reseller_commands(sub)
    _add_chain(sub)
    add_devchain_parser(sub)

    wallet = sub.add_parser("wallet", help="wallet helpers").add_subparsers(dest="action", required=True)
    wnew = wallet.add_parser("new", help="create a new wallet key file (hex, mode 0600)")
    wnew.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "health":  # every few seconds in a container: no heavy imports
        sys.exit(health.run(args.target, args.timeout))
    if args.log_format:  # also for the processes this one starts (gateway --workers, the demo's)
        os.environ["IPSX_LOG_FORMAT"] = args.log_format
    runtime.setup_logging(args.verbose, args.log_format)
    env = Environment.from_env()
    from ipsx import commands

    handler = getattr(commands, f"cmd_{args.command}")
    try:
        handler(args, env)
    except commands.UsageError as error:
        print(f"ipsx {args.command}: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
