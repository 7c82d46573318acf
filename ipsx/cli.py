"""The ``ipsx`` command line: one subcommand per long-running part, plus admin commands.

This module composes the parser from each command group's own (gateway, worker and api in
:mod:`ipsx.service_parsers`, provide in :mod:`ipsx.provide_parser`, the chain commands in
:mod:`ipsx.chain_parsers`, …), adds the small admin commands (migrate, health, demo, account, key,
wallet) itself, and runs the chosen command's ``cmd_*`` of :mod:`ipsx.commands`, imported only then.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ipsx import health, runtime
from ipsx.chain_parsers import add_chain_commands
from ipsx.client_commands import add_client_commands
from ipsx.devchain import add_devchain_parser
from ipsx.inspect_command import add_inspect_command
from ipsx.listen import port_number
from ipsx.provide_parser import add_provide_command
from ipsx.reseller_commands import add_reseller_commands
from ipsx.service_parsers import (
    add_api_command,
    add_gateway_command,
    add_worker_command,
    positive_seconds,
)
from ipsx.settings import Environment

DESCRIPTION = """\
IPSX, the IP Sharing Exchange: a rotating proxy gateway whose exits are lent by providers.

Quick start:  ipsx demo             (everything on this machine, nothing to install)
Production:   ipsx gateway | ipsx worker | ipsx provide, configured by
              IPSX_REDIS_URL and IPSX_DATABASE_URL.
"""


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
    add_gateway_command(sub)
    add_provide_command(sub)
    add_worker_command(sub)
    add_api_command(sub)
    sub.add_parser("migrate", help="create the database if needed and apply migrations")
    _add_health(sub)
    _add_demo(sub)
    _add_account(sub)
    _add_key(sub)
    add_client_commands(sub)
    add_inspect_command(sub)
    add_reseller_commands(sub)
    add_chain_commands(sub)
    add_devchain_parser(sub)
    _add_wallet(sub)
    return parser


def _add_health(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "health",
        help="check that a service is up (exit status 0) or not (1): for container health checks",
        description="tcp://HOST:PORT passes when something accepts connections there (a gateway's "
        "proxy port); http://HOST:PORT/PATH when a GET answers 2xx (the API's /readyz).",
    )
    p.add_argument(
        "target",
        nargs="?",
        default=os.environ.get("IPSX_HEALTHCHECK", "tcp://127.0.0.1:8080"),
        help="what to check (default: $IPSX_HEALTHCHECK, else %(default)s)",
    )
    p.add_argument("--timeout", type=positive_seconds, default=3.0, help="seconds (default: %(default)s)")


def _add_demo(sub: argparse._SubParsersAction[Any]) -> None:
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
    demo.add_argument(
        "--http-port", type=port_number, default=8080, help="HTTP proxy port (default: %(default)s)"
    )
    demo.add_argument(
        "--socks-port", type=port_number, default=1080, help="SOCKS5 port (default: %(default)s)"
    )
    demo.add_argument(
        "--tunnel-port", type=port_number, default=8443, help="provider tunnel port (default: %(default)s)"
    )
    demo.add_argument(
        "--origin-port",
        type=port_number,
        default=18000,
        help="port of the demo page that shows which exit a request left from (default: %(default)s)",
    )
    demo.add_argument(
        "--api-port", type=port_number, default=8000, help="REST API port (default: %(default)s)"
    )
    demo.add_argument(
        "--once",
        action="store_true",
        help="send one request through each protocol, print the metered usage and exit",
    )


def _add_account(sub: argparse._SubParsersAction[Any]) -> None:
    account = sub.add_parser("account", help="manage accounts").add_subparsers(dest="action", required=True)
    create = account.add_parser("create", help="create an account for a wallet address")
    create.add_argument("--address", required=True, help="the account's Ethereum address")
    create.add_argument("--name", required=True, help="proxy user name: letters, digits, '_' (no '-')")
    account.add_parser("list", help="list accounts")
    credit = account.add_parser("credit", help="operator: credit an account's balance")
    credit.add_argument("name")
    credit.add_argument("amount", help="IPSX, e.g. 100 or 0.5")
    credit.add_argument("--reference", help="idempotency key (default: a new one)")


def _add_key(sub: argparse._SubParsersAction[Any]) -> None:
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


def _add_wallet(sub: argparse._SubParsersAction[Any]) -> None:
    wallet = sub.add_parser("wallet", help="wallet helpers").add_subparsers(dest="action", required=True)
    wnew = wallet.add_parser("new", help="create a new wallet key file (hex, mode 0600)")
    wnew.add_argument("--out", type=Path, required=True)


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
