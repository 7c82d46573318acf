"""CLI commands that talk to the REST API through :mod:`ipsx.sdk`: orders, deals, usage, market,
withdrawals.

They reach the API at ``--api`` (``IPSX_API_URL``, default ``http://127.0.0.1:8000``) with an API
key or session token (``--token`` / ``IPSX_TOKEN``), or sign in with a wallet key file (``--key``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from billing.errors import InvalidAmount
from billing.ledger import parse_amount
from gateway.agent.settings import KeyFileError, load_key
from ipsx.payagent import PaymentAgent, keep_payouts
from ipsx.sdk import ApiError, Client
from ipsx.service_parsers import positive_seconds

DEFAULT_API = "http://127.0.0.1:8000"
_DURATION = re.compile(r"([0-9]{1,9})(s|m|h|d)?")
_SCHEDULE = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]")
_SIZE = re.compile(r"([0-9]{1,15})(B|KB|MB|GB|TB)?", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_SIZES = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


class ClientError(Exception):
    """A bad argument, or the API refused: the message says which."""


def duration(text: str) -> int:
    """``90``, ``45s``, ``30m``, ``2h``, ``1d`` → seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError("a duration like 90, 45s, 30m, 2h or 1d")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def size(text: str) -> int:
    """``500MB``, ``5GB`` (decimal units, as traffic is billed) → bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError("a size like 500MB or 5GB")
    return int(match.group(1)) * _SIZES[(match.group(2) or "b").lower()]


def price(text: str) -> str:
    """An IPSX amount (``1.5``) → base units as a decimal string."""
    try:
        return str(parse_amount(text))
    except InvalidAmount as error:
        raise argparse.ArgumentTypeError(error.reason) from None


def schedule(text: str) -> str:
    """``HH:MM-HH:MM`` in UTC."""
    if not _SCHEDULE.fullmatch(text):
        raise argparse.ArgumentTypeError("a daily UTC window like 22:00-07:00")
    return text


def moment(text: str) -> float:
    """An ISO 8601 time (``2026-12-01T08:00Z``; UTC when no offset is given) or unix seconds."""
    if text.isdigit():
        return float(text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("an ISO 8601 time like 2026-12-01T08:00Z, or unix seconds") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def _time_frame(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--starts-at", type=moment, help="open no deal before this time (default: now)")
    parser.add_argument(
        "--ends-at", type=moment, dest="expires_at", help="open no deal after this time (default: none)"
    )


_KEY_FILE = (
    "(hex private key, or keystore JSON with IPSX_KEY_PASSWORD). Keep it chmod 600: a warning is "
    "logged when group or others may read it"
)


def _key_file(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the path of your wallet's key file, not an empty string")
    return text


def _api_options(*, signs: bool) -> argparse.ArgumentParser:
    """The options of the commands that call the API. With ``signs`` (commands that sign with the
    wallet: balance proofs, payout proofs, channel transactions) --key is required, no variable
    of the environment standing in for it, and there is no --token: the wallet signs in."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--api",
        default=os.environ.get("IPSX_API_URL", DEFAULT_API),
        help=f"API base URL (default: $IPSX_API_URL, else {DEFAULT_API})",
    )
    if signs:
        options.add_argument(
            "--key",
            required=True,
            type=_key_file,
            help=f"required: your wallet's key file, which signs and signs in with Ethereum {_KEY_FILE}",
        )
    else:
        options.add_argument("--token", help="API key or session token (default: $IPSX_TOKEN)")
        options.add_argument(
            "--key", help=f"wallet key file: sign in with Ethereum instead of a token {_KEY_FILE}"
        )
    options.add_argument("--json", action="store_true", help="print the API's JSON as is")
    return options


def add_client_commands(sub: argparse._SubParsersAction[Any]) -> None:
    common = _api_options(signs=False)
    signing = _api_options(signs=True)

    order = sub.add_parser(
        "order", help="place, amend, list and cancel market orders and packages (through the API)"
    )
    actions = order.add_subparsers(dest="action", required=True)
    offer = actions.add_parser("offer", parents=[common], help="offer one of your live exits")
    which = offer.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--exit",
        action="append",
        dest="exit_ids",
        help="the exit id (`ipsx provide` logs it); repeat it to offer several exits, one order each",
    )
    which.add_argument(
        "--all-exits",
        action="store_true",
        help="offer every live exit of your wallet (narrowed by --exit-country / --exit-type)",
    )
    offer.add_argument("--exit-country", help="with --all-exits: only exits in this country")
    offer.add_argument("--exit-type", choices=("residential", "mobile", "datacenter"))
    offer.add_argument("--price-per-gb", type=price, default="0", help="IPSX per GB (default: 0)")
    offer.add_argument("--price-per-hour", type=price, default="0", help="IPSX per hour (default: 0)")
    offer.add_argument("--sharing", choices=("dedicated", "shared", "both"), default="both")
    offer.add_argument("--capacity", type=int, default=1, help="concurrent shared deals (default: 1)")
    offer.add_argument(
        "--schedule", type=schedule, help="trade only in this daily UTC window, e.g. 22:00-07:00"
    )
    request = actions.add_parser("request", parents=[common], help="ask for IPs")
    request.add_argument("--country", help="ISO 3166-1 alpha-2, e.g. fr")
    request.add_argument("--type", choices=("residential", "mobile", "datacenter"))
    request.add_argument("--protocol", choices=("http", "https", "socks5"), default="https")
    request.add_argument("--ips", type=int, default=1, help="distinct exits wanted (default: 1)")
    request.add_argument("--duration", type=duration, default=3600, help="per deal, e.g. 30m (default: 1h)")
    request.add_argument(
        "--traffic", type=size, default=10**9, help="allowance per deal, e.g. 5GB (default: 1GB)"
    )
    request.add_argument("--max-price-per-gb", type=price, default="0", help="IPSX per GB at most")
    request.add_argument("--max-price-per-hour", type=price, default="0", help="IPSX per hour at most")
    request.add_argument("--dedicated", action="store_true", help="exits no one else uses meanwhile")
    request.add_argument("--ioc", action="store_true", help="immediate-or-cancel: never rest on the book")
    request.add_argument("--idempotency-key", help="retrying with the same key places the order once")
    _time_frame(request)
    package = actions.add_parser(
        "package",
        parents=[common],
        help="buy a package: IPs for a duration with one traffic allowance (placed as a request)",
    )
    package.add_argument("--country", help="ISO 3166-1 alpha-2, e.g. fr")
    package.add_argument("--type", choices=("residential", "mobile", "datacenter"))
    package.add_argument("--count", type=int, default=1, help="IPs in the package (default: 1)")
    package.add_argument("--duration", type=duration, default=3600, help="e.g. 30m (default: 1h)")
    package.add_argument("--traffic", type=size, required=True, help="total for all its IPs, e.g. 5GB")
    package.add_argument("--max-price-per-gb", type=price, default="0", help="IPSX per GB at most")
    package.add_argument("--max-price-per-hour", type=price, default="0", help="IPSX per hour at most")
    package.add_argument("--dedicated", action="store_true", help="exits no one else uses meanwhile")
    package.add_argument("--idempotency-key", help="retrying with the same key places the package once")
    _time_frame(package)
    amend = actions.add_parser("amend", parents=[common], help="change an open order")
    amend.add_argument("order_id")
    amend.add_argument("--ips", type=int, help="a request's IPs still wanted")
    amend.add_argument("--max-price-per-gb", type=price, help="a request's new cap, IPSX per GB")
    amend.add_argument("--max-price-per-hour", type=price, help="a request's new cap, IPSX per hour")
    amend.add_argument("--price-per-gb", type=price, help="an offer's new price, IPSX per GB")
    amend.add_argument("--price-per-hour", type=price, help="an offer's new price, IPSX per hour")
    actions.add_parser("list", parents=[common], help="your orders, newest first")
    cancel = actions.add_parser("cancel", parents=[common], help="cancel an open order")
    cancel.add_argument("order_id")
    pac_file = actions.add_parser(
        "pac", parents=[common], help="the PAC file URL of a request order, for browsers and OS settings"
    )
    pac_file.add_argument("order_id")

    sub.add_parser("deals", parents=[common], help="your deals (as requester or provider), newest first")
    sub.add_parser(
        "invoices",
        parents=[common],
        help="your payment channel's invoices, newest first (`ipsx pay` pays them)",
    )
    deal = sub.add_parser("deal", help="report on one of your deals, or (operator) decide a dispute")
    deal_actions = deal.add_subparsers(dest="action", required=True)
    report = deal_actions.add_parser(
        "report",
        parents=[common],
        help="as provider: ready, serving, stopped; as requester: accepted, ok, complaint; "
        "either: cancel (before it is active)",
    )
    report.add_argument("deal_id")
    report.add_argument(
        "report", choices=("ready", "serving", "stopped", "accepted", "ok", "complaint", "cancel")
    )
    resolve = deal_actions.add_parser(
        "resolve", parents=[common], help="operator: decide what a disputed deal bills (operator API key)"
    )
    resolve.add_argument("deal_id")
    decision = resolve.add_mutually_exclusive_group(required=True)
    decision.add_argument("--bill", choices=("gateway", "agent", "lower", "none"), help="whose count")
    decision.add_argument("--bytes", type=int, dest="billable_bytes", help="an explicit byte count")
    withdrawal = sub.add_parser(
        "withdrawal",
        help="take funds out to your wallet; (operator) approve, complete or reject withdrawals",
        description="A withdrawal reserves IPSX of yours; the operator's chain payer (`ipsx chain "
        "watch --send-withdrawals`) sends it to your wallet address: it is 'sending' while the "
        "transfer waits for its confirmations, then 'completed' with the transaction hash. A "
        "transfer that reverted leaves it 'failed', its funds still reserved, until the operator "
        "approves it again or rejects it (or you cancel it).",
    )
    w_actions = withdrawal.add_subparsers(dest="action", required=True)
    w_request = w_actions.add_parser(
        "request",
        parents=[common],
        help="reserve IPSX to be sent to your wallet address (an API key needs the withdraw scope)",
    )
    w_request.add_argument("amount", type=price, help="IPSX, e.g. 12.5")
    w_request.add_argument(
        "--source",
        choices=("balance", "earnings"),
        default="balance",
        help="your spendable balance or your earnings as a provider (default: %(default)s)",
    )
    w_request.add_argument("--idempotency-key", help="retrying with the same key asks once")
    w_actions.add_parser("list", parents=[common], help="your withdrawals, newest first")
    w_cancel = w_actions.add_parser("cancel", parents=[common], help="take back a pending withdrawal")
    w_cancel.add_argument("withdrawal_id", type=int)
    w_approve = w_actions.add_parser(
        "approve",
        parents=[common],
        help="operator: let the chain payer send a withdrawal above its approval limit, or a failed "
        "one again (operator API key)",
    )
    w_approve.add_argument("withdrawal_id", type=int)
    w_complete = w_actions.add_parser(
        "complete",
        parents=[common],
        help="operator: the tokens were sent by hand, outside IPSX (operator API key); not for a "
        "withdrawal the chain payer is sending",
    )
    w_complete.add_argument("withdrawal_id", type=int)
    w_complete.add_argument("--tx", required=True, dest="tx_hash", help="the transfer's transaction hash")
    w_reject = w_actions.add_parser(
        "reject", parents=[common], help="operator: refuse a withdrawal; its funds go back"
    )
    w_reject.add_argument("withdrawal_id", type=int)
    w_reject.add_argument("--reason", required=True, help="what its owner is told")
    pay = sub.add_parser(
        "pay",
        parents=[signing],
        help="run your payment agent: pay your channel's invoices with balance proofs (needs --key)",
        description="Signs, with the wallet of --key, the balance proofs that pay your open invoices, "
        "after checking each: it must continue the last balance signed, stay within the channel's "
        "deposit, --max-invoice and --budget. Runs until Ctrl-C (or one pass with --once).",
    )
    pay.add_argument(
        "--max-invoice", type=price, default=str(10 * 10**18), help="IPSX per invoice at most (default: 10)"
    )
    pay.add_argument(
        "--budget", type=price, default=str(100 * 10**18), help="IPSX this run signs at most (default: 100)"
    )
    pay.add_argument(
        "--interval", type=positive_seconds, default=5.0, help="seconds between passes (default: 5)"
    )
    pay.add_argument("--once", action="store_true", help="one pass, then exit")
    pay.add_argument(
        "--store",
        type=Path,
        default=Path(".ipsx/signed-balances.json"),
        help="the balances this wallet signed, per channel: a hub stating more is not paid "
        "(default: %(default)s)",
    )
    payouts = sub.add_parser(
        "payouts",
        parents=[signing],
        help="as a provider: check and keep the payout proofs the hub signed for your earnings",
        description="Fetches your payout channels' latest balance proofs, checks that each is the "
        "operator's signature for that channel and not below the one you hold, and keeps the "
        "highest in --store: with it you can close the channel on-chain and be paid.",
    )
    payouts.add_argument(
        "--store",
        type=Path,
        default=Path(".ipsx/payouts.json"),
        help="where the proofs are kept (default: %(default)s)",
    )
    chain = argparse.ArgumentParser(add_help=False)
    chain.add_argument(
        "--rpc",
        default=os.environ.get("IPSX_RPC_URL", "http://127.0.0.1:8545"),
        help="Ethereum node (default: $IPSX_RPC_URL, else http://127.0.0.1:8545)",
    )
    chain.add_argument(
        "--deployment",
        type=Path,
        default=Path(".ipsx/chain.json"),
        help="the contracts' addresses, as `ipsx chain deploy` wrote them (default: %(default)s)",
    )
    channel = sub.add_parser(
        "channel",
        help="open or close your payment channel on-chain (needs --key)",
        description="A requester funds its account by opening a PaymentChannels channel to the "
        "operator; `ipsx pay` then pays its invoices with balance proofs on it. Closing asks the "
        "operator's consent (given when nothing is owed), then closes on-chain at the last balance.",
    )
    channel_actions = channel.add_subparsers(dest="action", required=True)
    c_open = channel_actions.add_parser(
        "open", parents=[signing, chain], help="as a requester: open a channel to the operator with IPSX"
    )
    c_open.add_argument("--deposit", required=True, help="IPSX to lock in the channel, e.g. 25")
    c_close = channel_actions.add_parser(
        "close",
        parents=[signing, chain],
        help="close a channel cooperatively: a requester's (once its invoices are paid) or a provider's "
        "payout channel (with the proof `ipsx payouts` kept)",
    )
    c_close.add_argument("channel_id", help="the channel's id (0x and 64 hex digits)")
    c_close.add_argument(
        "--store",
        type=Path,
        default=Path(".ipsx/payouts.json"),
        help="a provider's kept payout proofs (default: %(default)s)",
    )
    sub.add_parser("usage", parents=[common], help="your metered streams, newest first")
    market = sub.add_parser("market", parents=[common], help="public market data: depth and price index")
    market.add_argument("--country")
    market.add_argument("--type", choices=("residential", "mobile", "datacenter"))


def _wallet(args: argparse.Namespace) -> LocalAccount:
    """The wallet of ``--key``; raises ClientError, naming the file and never the key, when the
    file is missing, unreadable or holds no key."""
    path = Path(args.key)
    try:
        return load_key(path, os.environ.get("IPSX_KEY_PASSWORD"))
    except KeyFileError as error:
        raise ClientError(f"cannot load the wallet key from {path}: {error.reason}") from None
    except OSError as error:
        raise ClientError(
            f"cannot read the wallet key file {path}: {error.strerror or type(error).__name__}"
        ) from None


def _client(args: argparse.Namespace) -> Client:
    wallet = _wallet(args) if args.key else None
    try:
        if wallet is not None:
            return Client.sign_in(args.api, wallet)
        return Client(args.api, token=args.token or os.environ.get("IPSX_TOKEN"))
    except (OSError, ValueError) as error:
        raise ClientError(f"cannot sign in: {error}") from None


def _show(args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    print(json.dumps(data, indent=2) if args.json else "\n".join(lines))


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The optional order terms the command line gave, by name."""
    return {name: value for name in names if (value := getattr(args, name, None)) is not None}


def _placed_lines(kind: str, placed: dict[str, Any]) -> list[str]:
    """A placed request or package: its deals, and whether the rest waits on the book."""
    deals = placed.get("deals", [])
    lines = [f"{kind} {placed['order_id']}: {len(deals)} deal(s) opened"]
    lines += [
        f"  {d['deal_id']}  exit {d['exit_id']}  {d['price_per_gb']['ipsx']} IPSX/GB"
        f"  reserve {d['reserve']['ipsx']}"
        for d in deals
    ]
    if placed.get("resting"):
        lines.append("  the rest waits on the book")
    return lines


def _run(args: argparse.Namespace) -> None:
    api = _client(args)
    if args.command == "order" and args.action == "offer":
        if args.all_exits:
            args.exit_ids = [
                e["exit_id"]
                for e in api.exits()
                if args.exit_country in (None, e["country"]) and args.exit_type in (None, e["type"])
            ]
            if not args.exit_ids:
                raise ClientError("no live exit of yours matches; is your agent online?")
        offers = [
            api.place_offer(
                exit_id=exit_id,
                price_per_gb=args.price_per_gb,
                price_per_hour=args.price_per_hour,
                sharing=args.sharing,
                shared_capacity=args.capacity,
                **_given(args, "schedule"),
            )
            for exit_id in args.exit_ids
        ]
        _show(
            args,
            offers[0] if len(offers) == 1 else offers,
            [
                f"offer {placed['order_id']} placed for exit {exit_id}; "
                f"{len(placed.get('deals', []))} deal(s) opened"
                for exit_id, placed in zip(args.exit_ids, offers, strict=True)
            ],
        )
    elif args.command == "order" and args.action == "request":
        placed = api.place_request(
            idempotency_key=args.idempotency_key,
            filters=_given(args, "country", "type", "protocol"),
            ips=args.ips,
            duration_s=args.duration,
            traffic_bytes=args.traffic,
            max_price_per_gb=args.max_price_per_gb,
            max_price_per_hour=args.max_price_per_hour,
            dedicated=args.dedicated,
            rest=not args.ioc,
            **_given(args, "starts_at", "expires_at"),
        )
        _show(args, placed, _placed_lines("request", placed))
    elif args.command == "order" and args.action == "package":
        placed = api.place_package(
            idempotency_key=args.idempotency_key,
            filters=_given(args, "country", "type"),
            count=args.count,
            duration_s=args.duration,
            total_traffic_bytes=args.traffic,
            max_price_per_gb=args.max_price_per_gb,
            max_price_per_hour=args.max_price_per_hour,
            dedicated=args.dedicated,
            **_given(args, "starts_at", "expires_at"),
        )
        _show(args, placed, _placed_lines("package", placed))
    elif args.command == "order" and args.action == "amend":
        fields = ("ips", "max_price_per_gb", "max_price_per_hour", "price_per_gb", "price_per_hour")
        changes = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
        if not changes:
            raise ClientError("say what to change: --ips, --max-price-per-gb, --price-per-gb, …")
        amended = api.amend(args.order_id, **changes)
        opened = amended.get("deals", [])
        _show(args, amended, [f"order {args.order_id} amended; {len(opened)} deal(s) opened"])
    elif args.command == "order" and args.action == "list":
        items = list(api.orders())
        _show(
            args,
            items,
            [f"{o['order_id']}  {o['side']:7}  {o['state']:9}  filled {o['filled']}" for o in items],
        )
    elif args.command == "order" and args.action == "cancel":
        api.cancel(args.order_id)
        print(f"order {args.order_id} cancelled")
    elif args.command == "order" and args.action == "pac":
        pac = api.order_pac(args.order_id)
        lines = [
            f"PAC file URL:  {pac['pac_url']}",
            f"proxy:         {pac['proxy']}",
            f"user name:     {pac['proxy_username']}  (password: your API key's secret)",
        ]
        _show(args, pac, lines)
    elif args.command == "deals":
        items = list(api.deals())
        _show(
            args,
            items,
            [
                f"{d['deal_id']}  {d['role']:9}  {d['state']:9}  exit {d['exit_id']}"
                f"  charge {d['charge']['ipsx'] if d['charge'] else '-'}"
                for d in items
            ],
        )
    elif args.command == "invoices":
        items = list(api.invoices())
        _show(
            args,
            items,
            [
                f"{i['invoice_id']:>6}  {i['state']:7}  {i['amount']['ipsx']:>12} IPSX"
                f"  cumulative {i['cumulative']['ipsx']}  deals {len(i['deal_ids'])}  {i['created_at']}"
                for i in items
            ],
        )
    elif args.command == "deal" and args.action == "report":
        answer = api.report(args.deal_id, args.report)
        _show(args, answer, [f"deal {answer['deal_id']} is {answer['state']}"])
    elif args.command == "deal" and args.action == "resolve":
        answer = api.resolve(args.deal_id, bill=args.bill, billable_bytes=args.billable_bytes)
        _show(
            args,
            answer,
            [f"deal {answer['deal_id']} is {answer['state']}; it bills {answer['billable_bytes']} bytes"],
        )
    elif args.command == "withdrawal":
        _withdrawal(args, api)
    elif args.command == "pay":
        _pay(args, api)
    elif args.command == "payouts":
        _payouts(args, api)
    elif args.command == "usage":
        items = list(api.usage())
        _show(
            args,
            items,
            [
                f"{u['closed_at']}  {u['target']:30}  up {u['gateway_bytes']['up']}"
                f"  down {u['gateway_bytes']['down']}  deal {u['deal_id'] or '-'}"
                for u in items
            ],
        )
    elif args.command == "market":
        levels = api.depth(args.country, args.type)
        _show(
            args,
            levels,
            [
                f"{lv['price_per_gb']['ipsx']:>10} IPSX/GB  {lv['price_per_hour']['ipsx']:>8} IPSX/h"
                f"  {lv['offers']} offer(s)"
                for lv in levels
            ],
        )


def _pay(args: argparse.Namespace, api: Client) -> None:
    if not args.key:
        raise ClientError("ipsx pay signs balance proofs: give your wallet with --key")
    wallet = _wallet(args)
    agent = PaymentAgent(
        api, wallet, max_invoice=int(args.max_invoice), budget=int(args.budget), store=args.store
    )
    while True:
        done = agent.pay_once()
        for paid in done.paid:
            print(
                f"paid invoice {paid['invoice_id']}: balance {paid['cumulative']['ipsx']} IPSX signed",
                flush=True,
            )
        for invoice_id, why in done.refused:
            print(f"invoice {invoice_id} not paid: {why}", flush=True)
        if args.once:
            return
        time.sleep(args.interval)


def _payouts(args: argparse.Namespace, api: Client) -> None:
    if not args.key:
        raise ClientError("ipsx payouts checks proofs made out to your wallet: give it with --key")
    wallet = _wallet(args)
    try:
        kept, lines = keep_payouts(api, wallet, args.store)
    except OSError as error:
        raise ClientError(f"cannot keep the proofs in {args.store}: {error}") from None
    _show(args, kept, lines or ["no payout channel to your wallet"])


def _channel(args: argparse.Namespace) -> None:
    from ipsx import channel_commands  # web3 is loaded by the chain commands only

    if not args.key:
        raise ClientError(f"ipsx channel {args.action} signs with your wallet: give it with --key")
    wallet = _wallet(args)
    try:
        if args.action == "open":
            channel_commands.open_channel(args, wallet)
        else:
            channel_commands.close_channel(args, _client(args), wallet)
    except channel_commands.ChannelError as error:
        raise ClientError(str(error)) from None


def _withdrawal_line(w: dict[str, Any]) -> str:
    line = f"withdrawal {w['withdrawal_id']}  {w['state']:9}  {w['amount']['ipsx']} IPSX from {w['source']}"
    line += f" to {w['address']}"
    if w.get("approved_at"):
        line += "  approved"
    if w.get("tx_hash"):
        line += f"  tx {w['tx_hash']}"
    if w.get("reason"):
        line += f"  ({w['reason']})"
    return line


def _withdrawal(args: argparse.Namespace, api: Client) -> None:
    if args.action == "list":
        items = list(api.withdrawals())
        _show(args, items, [_withdrawal_line(w) for w in items] or ["no withdrawals"])
        return
    if args.action == "request":
        answer = api.withdraw(int(args.amount), source=args.source, idempotency_key=args.idempotency_key)
    elif args.action == "cancel":
        answer = api.cancel_withdrawal(args.withdrawal_id)
    elif args.action == "complete":
        answer = api.complete_withdrawal(args.withdrawal_id, args.tx_hash)
    elif args.action == "approve":
        answer = api.approve_withdrawal(args.withdrawal_id)
    else:
        answer = api.reject_withdrawal(args.withdrawal_id, args.reason)
    _show(args, answer, [_withdrawal_line(answer)])


def run_client_command(args: argparse.Namespace) -> None:
    """Run one client command; raises ClientError with the API's answer when it refuses."""
    try:
        if args.command == "channel":
            _channel(args)
            return
        _run(args)
    except ApiError as error:
        hint = ""
        if error.status == 401 and not (
            getattr(args, "token", None) or os.environ.get("IPSX_TOKEN") or getattr(args, "key", None)
        ):
            hint = "; give an API key with --token or IPSX_TOKEN, or a wallet key file with --key"
        raise ClientError(f"the API refused: {error.detail} ({error.status} {error.code}){hint}") from None
    except OSError as error:
        raise ClientError(f"cannot reach the API at {args.api}: {error}") from None
