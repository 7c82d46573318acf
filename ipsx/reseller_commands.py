"""``ipsx reseller …``: the operator's (and a reseller's) command line for white-label resellers.

``create`` flags an account as a reseller (brand, markup, endpoint); the ``subuser-*`` commands
manage its sub-users, their keys, limits and funds; ``usage`` prints a month's report. Each runs
against IPSX_DATABASE_URL. A reseller's listener is ``ipsx gateway --reseller-port NAME=PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from billing import db, ledger, reseller_terms, resellers
from billing.errors import BillingError
from billing.resellers import KEEP, Reseller
from gateway.agent.caps import format_bytes, parse_size
from ipsx.settings import Environment

EPILOG = """\
Examples:
  ipsx reseller create acme --brand "Acme Proxy" --markup-bps 2500 --host proxy.acme.example --port 9100
  ipsx reseller subuser-create acme bob --quota 50GB --spend-limit 20
  ipsx reseller subuser-key acme bob            # prints bob's secret once
  ipsx reseller fund acme bob 10                # 10 IPSX from acme's balance to bob's
  ipsx reseller subuser-limits acme bob --quota none
  ipsx reseller usage acme --month 2025-06
Customers of acme then use  http://bob-country-fr:SECRET@proxy.acme.example:9100  (the gateway
runs  ipsx gateway --reseller-port acme=9100).
"""
_NAME_PORT = re.compile(r"([a-z0-9_]{1,32})=([0-9]{1,5})")
_MONTH = re.compile(r"([12][0-9]{3})-(0[1-9]|1[0-2])")


class ResellerCommandError(Exception):
    """The command cannot go on; the message says why."""


def parse_reseller_port(text: str) -> tuple[str, int]:
    """``NAME=PORT`` (the argparse ``type`` of ``ipsx gateway --reseller-port``)."""
    found = _NAME_PORT.fullmatch(text.strip().lower())
    if found is None or not 0 < int(found.group(2)) < 65536:
        raise argparse.ArgumentTypeError(f"expected RESELLER=PORT, e.g. acme=9100 (got {text[:60]!r})")
    return found.group(1), int(found.group(2))


def _limit(parse: Callable[[str], int]) -> Callable[[str], int | None]:
    def parsed(text: str) -> int | None:
        if text.strip().lower() == "none":
            return None
        try:
            return parse(text)
        except (ValueError, BillingError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parsed


def add_reseller_commands(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "reseller",
        help="white-label resellers: brand, markup, sub-users, their keys, limits and funds",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    quota = {"type": _limit(parse_size), "default": KEEP, "help": "traffic per month: 50GB, 500MB, none"}
    spend = {"type": _limit(ledger.parse_amount), "default": KEEP, "help": "IPSX per month, or none"}

    create = actions.add_parser("create", help="operator: make an account a reseller")
    create.add_argument("reseller", help="the account's name")
    create.add_argument("--brand", required=True, help="the name its customers see instead of IPSX")
    create.add_argument("--markup-bps", type=int, default=0, help="markup on each charge, basis points")
    create.add_argument("--host", help="the hostname its customers use (your load balancer's)")
    create.add_argument("--port", type=int, help="its listener's port (ipsx gateway --reseller-port)")
    update = actions.add_parser("update", help="change a reseller's brand, markup or endpoint")
    update.add_argument("reseller")
    update.add_argument("--brand")
    update.add_argument("--markup-bps", type=int)
    update.add_argument("--host")
    update.add_argument("--port", type=int)
    actions.add_parser("list", help="list the resellers")

    screate = actions.add_parser("subuser-create", help="a new sub-user of a reseller")
    screate.add_argument("reseller")
    screate.add_argument("name", help="its proxy user name on the reseller's listener")
    screate.add_argument("--quota", **{**quota, "default": None})
    screate.add_argument("--spend-limit", **{**spend, "default": None})
    slist = actions.add_parser("subuser-list", help="a reseller's sub-users and their month so far")
    slist.add_argument("reseller")
    for verb, what in (("suspend", "refuse its new streams"), ("resume", "serve it again")):
        p = actions.add_parser(f"subuser-{verb}", help=f"{what}")
        p.add_argument("reseller")
        p.add_argument("name")
    limits = actions.add_parser("subuser-limits", help="set a sub-user's monthly quota and spend limit")
    limits.add_argument("reseller")
    limits.add_argument("name")
    limits.add_argument("--quota", **quota)
    limits.add_argument("--spend-limit", **spend)
    key = actions.add_parser("subuser-key", help="a new API key of a sub-user; the secret is shown once")
    key.add_argument("reseller")
    key.add_argument("name")
    key.add_argument("--label", default="")
    key.add_argument("--scopes", default="proxy,read", help="among proxy, read, keys (default: %(default)s)")
    fund = actions.add_parser("fund", help="move IPSX from the reseller's balance to a sub-user's")
    fund.add_argument("reseller")
    fund.add_argument("name")
    fund.add_argument("amount", help="IPSX, e.g. 10 or 0.5")
    fund.add_argument("--back", action="store_true", help="from the sub-user back to the reseller")
    fund.add_argument("--reference", help="idempotency key (default: a new one)")
    usage = actions.add_parser("usage", help="a month's traffic, charges and markup per sub-user")
    usage.add_argument("reseller")
    usage.add_argument("--month", help="YYYY-MM (default: this month, UTC)")


async def _reseller(pool: asyncpg.Pool, name: str) -> Reseller:
    reseller = await resellers.get_reseller(pool, name)
    if reseller is None:
        raise ResellerCommandError(f"no reseller is called {name!r}")
    return reseller


def _shown(amount: int | None) -> str:
    return "none" if amount is None else f"{ledger.format_amount(ledger.Amount(amount))} IPSX"


def _describe(reseller: Reseller) -> str:
    endpoint = f"{reseller.endpoint_host or '-'}:{reseller.endpoint_port or '-'}"
    return (
        f"{reseller.name:<20} brand {reseller.brand!r}  markup {reseller.markup_bps} bp  endpoint {endpoint}"
    )


async def _create(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    reseller = await resellers.create_reseller(
        pool,
        args.reseller,
        brand=args.brand,
        markup_bps=args.markup_bps,
        endpoint_host=args.host,
        endpoint_port=args.port,
    )
    print(f"reseller {_describe(reseller)}")


async def _update(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    reseller = await _reseller(pool, args.reseller)
    reseller = await resellers.update_reseller(
        pool,
        reseller.account_id,
        brand=args.brand,
        markup_bps=args.markup_bps,
        endpoint_host=args.host,
        endpoint_port=args.port,
    )
    print(f"reseller {_describe(reseller)}")


async def _list(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    for reseller in await resellers.list_resellers(pool):
        print(_describe(reseller))


async def _subuser_create(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    reseller = await _reseller(pool, args.reseller)
    sub = await resellers.create_subuser(
        pool, reseller.account_id, args.name, quota_bytes=args.quota, spend_limit=args.spend_limit
    )
    print(
        f"sub-user {sub.name} of {reseller.name} created"
        f" (next: ipsx reseller subuser-key {reseller.name} {sub.name})"
    )


async def _subuser_list(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    reseller = await _reseller(pool, args.reseller)
    after: str | None = None
    while True:
        page = await resellers.list_subusers(pool, reseller.account_id, after=after, limit=200)
        for sub in page:
            standing = await reseller_terms.standing(pool, sub.account_name)
            used = "-" if standing is None else format_bytes(standing.used_bytes)
            spent = "-" if standing is None else _shown(standing.spent)
            quota = "none" if sub.quota_bytes is None else format_bytes(sub.quota_bytes)
            state = "suspended" if sub.suspended else "active"
            limit = _shown(sub.spend_limit)
            print(f"{sub.name:<20} {state:<9} used {used} of {quota}  spent {spent} of {limit}")
        if len(page) < 200:
            return
        after = page[-1].name


async def _subuser_state(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    reseller = await _reseller(pool, args.reseller)
    suspended = args.action == "subuser-suspend"
    sub = await resellers.update_subuser(pool, reseller.account_id, args.name, suspended=suspended)
    print(f"sub-user {sub.name} {'suspended' if sub.suspended else 'resumed'}")


async def _subuser_limits(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    reseller = await _reseller(pool, args.reseller)
    sub = await resellers.update_subuser(
        pool, reseller.account_id, args.name, quota_bytes=args.quota, spend_limit=args.spend_limit
    )
    quota = "none" if sub.quota_bytes is None else format_bytes(sub.quota_bytes)
    print(f"sub-user {sub.name}: quota {quota} a month, spend limit {_shown(sub.spend_limit)} a month")


async def _subuser_key(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    reseller = await _reseller(pool, args.reseller)
    scopes = frozenset(part.strip() for part in args.scopes.split(",") if part.strip())
    new = await resellers.create_subuser_key(
        pool, reseller.account_id, args.name, label=args.label, scopes=scopes
    )
    print(
        f"key id: {new.key.key_id}\nsecret: {new.secret}\n"
        f"proxy password: {reseller_terms.proxy_password(new.secret)}  (the same, as the sub-user gives it"
        " on the reseller's listener)\n(the secret is shown only now)"
    )


async def _fund(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    reseller = await _reseller(pool, args.reseller)
    amount = ledger.parse_amount(args.amount)
    reference = args.reference or f"cli-{secrets.token_hex(8)}"
    moved = await resellers.transfer(
        pool, reseller.account_id, args.name, amount, to_subuser=not args.back, reference=reference
    )
    direction = (
        f"from {args.name} to {reseller.name}" if args.back else f"from {reseller.name} to {args.name}"
    )
    print(
        f"moved {_shown(amount)} {direction}" if moved else f"reference {reference} was used: nothing moved"
    )


async def _usage(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    reseller = await _reseller(pool, args.reseller)
    if args.month is None:
        start = reseller_terms.month_start(dt.datetime.now(dt.UTC))
    else:
        found = _MONTH.fullmatch(args.month)
        if found is None:
            raise ResellerCommandError("--month must be YYYY-MM")
        start = dt.datetime(int(found.group(1)), int(found.group(2)), 1, tzinfo=dt.UTC)
    rows = await reseller_terms.usage_report(
        pool, reseller.account_id, start, reseller_terms.next_month(start)
    )
    print(f"{reseller.name} ({reseller.brand}), {start:%Y-%m}:")
    for row in rows:
        print(
            f"  {row.name:<20} {row.streams:>6} streams  {format_bytes(row.bytes_up + row.bytes_down):>9}"
            f"  charged {_shown(row.charged)}  markup {_shown(row.markup_charged)}"
        )
    print(f"markup earned this month: {_shown(sum(row.markup_charged for row in rows))}")


_ACTIONS: dict[str, Callable[[asyncpg.Pool, argparse.Namespace], Awaitable[None]]] = {
    "create": _create,
    "update": _update,
    "list": _list,
    "subuser-create": _subuser_create,
    "subuser-list": _subuser_list,
    "subuser-suspend": _subuser_state,
    "subuser-resume": _subuser_state,
    "subuser-limits": _subuser_limits,
    "subuser-key": _subuser_key,
    "fund": _fund,
    "usage": _usage,
}


def cmd_reseller(args: argparse.Namespace, env: Environment) -> None:
    """Run ``ipsx reseller ACTION``; raises ``ipsx.commands.UsageError`` with the reason."""
    from ipsx.commands import UsageError

    async def go() -> None:
        pool = await db.open_migrated(env.database, max_size=2)
        try:
            await _ACTIONS[args.action](pool, args)
        finally:
            await pool.close()

    try:
        asyncio.run(go())
    except (BillingError, ResellerCommandError) as error:
        raise UsageError(str(error)) from None
