"""What each ``ipsx`` subcommand does: parse its arguments into settings and run the part."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import zoneinfo
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
from eth_account import Account
from eth_utils.address import is_address
from redis.exceptions import RedisClusterException, RedisError

from billing import accounts, db, ledger
from billing.errors import BillingError
from billing.worker import WorkerSettings, run_worker
from dashboard import pac
from dashboard.app import run_api
from dashboard.settings import ApiSettings
from gateway.agent.caps import Limits, parse_rate, parse_size, parse_window
from gateway.agent.fleet import run_agent
from gateway.agent.governor import Governor
from gateway.agent.policy import ExitPolicy, parse_blocked, parse_ports, parse_protocols
from gateway.agent.settings import (
    AgentSettings,
    ExitSpec,
    create_key_file,
    load_key,
    parse_exit,
    state_file_for,
)
from gateway.agent.status import describe, read_status
from gateway.inspect.settings import check_ca_secret
from gateway.server import run_gateway
from gateway.settings import GatewaySettings, default_node_id
from gateway.targeting import TargetingError, parse_rules
from ipsx import runtime
from ipsx.client_commands import ClientError, run_client_command
from ipsx.listen import ListenError
from ipsx.logs import redact_error, redacted_url, url_password
from ipsx.payagent import keep_payouts_every
from ipsx.settings import Environment
from ipsx.supervisor import run_workers, worker_settings
from pool.client import redis_from_url


class UsageError(Exception):
    """The command was called wrongly; the message says how to call it."""


# What reaching PostgreSQL raises when the server is not there or turns us away, or when the URL
# is malformed (a port that is no number is a ValueError, one past 65535 an OverflowError): the
# operator's setup, not a bug, so the commands say so in one line instead of a traceback.
DATABASE_UNUSABLE = (
    OSError,  # refused, unreachable, unknown host, timed out
    ValueError,
    OverflowError,
    asyncpg.PostgresConnectionError,
    asyncpg.InvalidAuthorizationSpecificationError,  # unknown role, wrong password
    asyncpg.InvalidCatalogNameError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


# What reaching Redis raises when it is not there or turns us away (a wrong password, a database
# number it does not have), or when the URL is malformed (ValueError).
_REDIS_UNUSABLE = (OSError, ValueError, RedisError, RedisClusterException)


def unusable(what: str, url: str, variable: str, error: Exception) -> UsageError:
    """One line: ``what`` at ``url`` (set by the environment ``variable``) cannot be used, and
    why; no part of the URL's password in it."""
    detail = " ".join(str(error).split()) or "no answer"
    line = f"cannot use {what} {redacted_url(url)} ({variable}): {type(error).__name__}: {detail}"
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        line += "; `ipsx migrate` creates it and its tables"
    if any(mark in (url_password(url) or "") for mark in "/?#@"):  # parsers cut the URL there
        line += " (percent-encode the password's '/', '?', '#' and '@' as %2F, %3F, %23 and %40)"
    return UsageError(redact_error(line, url))


async def connect_database(dsn: str, *, max_size: int = 2) -> asyncpg.Pool:
    """A pool on ``dsn``'s database, created first if needed (not migrated). Raises UsageError,
    naming the URL without its password, when the database cannot be reached or the URL is
    malformed."""
    try:
        await db.ensure_database(dsn)
        return await db.connect(dsn, min_size=1, max_size=max_size)
    except DATABASE_UNUSABLE as error:
        raise unusable("the database", dsn, "IPSX_DATABASE_URL", error) from None


def check_services(database_url: str, redis_url: str, *, ping_redis: bool) -> None:
    """What a service checks before it starts, so that a wrong URL or a server that is not there
    is one line (UsageError) and not a traceback: that its database exists and answers (the
    services do not create it: ``ipsx migrate`` does), that its Redis URL is well formed and,
    with ``ping_redis``, that Redis answers. The worker and the API ride out a Redis
    outage; a gateway needs Redis to start."""

    async def check() -> None:
        try:
            await (await asyncpg.connect(database_url)).close()
        except DATABASE_UNUSABLE as error:
            raise unusable("the database", database_url, "IPSX_DATABASE_URL", error) from None
        try:
            redis = redis_from_url(redis_url)
            try:
                if ping_redis:
                    await redis.ping()
            finally:
                await redis.aclose()
        except _REDIS_UNUSABLE as error:
            raise unusable("Redis", redis_url, "IPSX_REDIS_URL", error) from None

    asyncio.run(check())


def run_service(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """``runtime.run(main)`` for a service: a port it cannot listen on (in use, privileged, an
    address this host lacks) raises a UsageError, one line naming the option and the address,
    instead of a traceback."""
    try:
        runtime.run(main)
    except ListenError as error:
        raise UsageError(str(error)) from None


def serve_gateway(settings: GatewaySettings) -> None:
    """What each ``ipsx gateway --workers`` process runs: :func:`check_services`, then the node.
    A failed check or a port it cannot listen on is one line on stderr and exit status 1, a
    failure at startup to the supervisor, which starts the process again later (the service may
    be on its way up, the port's old owner on its way out)."""
    try:
        check_services(settings.database_url, settings.redis_url, ping_redis=True)
        run_service(lambda stop: run_gateway(settings, stop))
    except UsageError as error:
        sys.exit(f"ipsx gateway: {error}")


async def migrate(dsn: str) -> list[str]:
    pool = await connect_database(dsn)
    try:
        return await db.migrate(pool)
    finally:
        await pool.close()


def cmd_migrate(args: argparse.Namespace, env: Environment) -> None:
    applied = asyncio.run(migrate(env.database))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")


def cmd_gateway(args: argparse.Namespace, env: Environment) -> None:
    settings = GatewaySettings(
        redis_url=env.redis,
        database_url=env.database,
        host=args.host,
        http_port=args.http_port,
        socks_port=args.socks_port,
        tunnel_host=args.tunnel_host,
        tunnel_port=args.tunnel_port,
        node_id=args.node_id or default_node_id(),
        handshake_timeout=args.handshake_timeout,
        tunnel_cert=args.tunnel_cert,
        tunnel_key=args.tunnel_key,
        advertise_host=args.advertise_host,
        market=args.market,
        region=args.region,
        drain_timeout=args.drain_timeout,
        db_pool=args.db_pool,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        reseller_ports=tuple(args.reseller_port),
    )
    if args.workers == 1:
        check_services(settings.database_url, settings.redis_url, ping_redis=True)
        run_service(lambda stop: run_gateway(settings, stop))
        return
    try:
        workers = worker_settings(settings, args.workers)
    except ValueError as error:
        raise UsageError(str(error)) from None
    status = run_workers(workers, verbose=args.verbose, main=serve_gateway)
    if status:
        sys.exit(status)


def cmd_worker(args: argparse.Namespace, env: Environment) -> None:
    if args.claim_idle <= 0 or args.batch < 1 or args.db_pool < 1:
        raise UsageError("--claim-idle, --batch and --db-pool must be positive")
    settings = WorkerSettings(
        redis_url=env.redis,
        database_url=env.database,
        batch=args.batch,
        claim_idle_ms=int(args.claim_idle * 1000),
        db_pool=args.db_pool,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        **({"consumer": args.consumer} if args.consumer else {}),
    )
    check_services(settings.database_url, settings.redis_url, ping_redis=False)
    run_service(lambda stop: run_worker(settings, stop=stop))


def cmd_api(args: argparse.Namespace, env: Environment) -> None:
    secret = os.environ.get("IPSX_JWT_SECRET", "")
    if len(secret.encode()) < 32:
        raise UsageError("set IPSX_JWT_SECRET to a random string of at least 32 bytes")
    if not pac.valid_proxy_address(args.proxy_address):
        raise UsageError(f"--proxy-address must be HOST:PORT (got {args.proxy_address[:60]!r})")
    try:
        unpaid_limit = ledger.parse_amount(args.unpaid_limit)
    except BillingError as error:
        raise UsageError(f"--unpaid-limit: {error}") from None
    if args.channels_address is not None and not is_address(args.channels_address):
        raise UsageError("--channels-address must be a 0x address")
    if args.invoice_interval <= 0:
        raise UsageError("--invoice-interval must be positive")
    if not 5 <= args.spot_duration <= 30 * 86_400:
        raise UsageError("--spot-duration must be 5 seconds to 30 days")
    if args.consent_ttl > 30 * 86_400:
        raise UsageError("--consent-ttl must be at most 30 days (2592000 seconds)")
    if not 1 <= args.spot_traffic_gb <= 10**6:
        raise UsageError("--spot-traffic-gb must be 1 to 1,000,000")
    try:
        inspect_ca_secret = check_ca_secret(os.environ.get("IPSX_INSPECT_CA_SECRET") or None)
    except ValueError as error:
        raise UsageError(str(error)) from None
    settings = ApiSettings(
        database_url=env.database,
        redis_url=env.redis,
        jwt_secret=secret,
        host=args.host,
        port=args.port,
        siwe_domain=args.siwe_domain or f"{args.host}:{args.port}",
        chain_id=args.chain_id,
        db_pool=args.db_pool,
        advertise_url=args.advertise_url,
        proxy_address=args.proxy_address,
        channels_address=args.channels_address,
        unpaid_limit=unpaid_limit,
        invoice_interval=args.invoice_interval,
        consent_ttl=args.consent_ttl,
        spot_duration_s=args.spot_duration,
        spot_traffic_bytes=args.spot_traffic_gb * 10**9,
        socks_address=args.socks_address,
        public_url=args.public_url,
        web_signin_limit=args.web_signin_limit,
        auth_nonce_limit=args.auth_nonce_limit,
        auth_siwe_limit=args.auth_siwe_limit,
        trusted_proxies=tuple(args.trusted_proxy),
        web_demo_account=args.web_demo_account,
        web_live_interval=args.web_live_interval,
        operator_key=_operator_key(args.channels_address),
        inspect_ca_secret=inspect_ca_secret,
    )
    check_services(settings.database_url, settings.redis_url, ping_redis=False)
    run_service(lambda stop: run_api(settings, stop))


def _operator_key(channels_address: str | None) -> str | None:
    """IPSX_OPERATOR_KEY (hex) when payouts are on; never from the command line, never printed."""
    key = os.environ.get("IPSX_OPERATOR_KEY") or None
    if key is None or channels_address is None:
        return None
    try:
        Account.from_key(key)
    except (ValueError, TypeError):
        raise UsageError("IPSX_OPERATOR_KEY is not a private key (hex)") from None
    return key


GATEWAY_FORMS = "HOST:PORT, tls://HOST:PORT, ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH]"


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """Where ``ipsx provide`` dials: host, port, TLS or not, and the WebSocket path if any."""

    host: str
    port: int
    tls: bool
    websocket_path: str | None = None  # a ws:// or wss:// tunnel (None: the native protocol)


def parse_gateway_address(text: str) -> GatewayAddress:
    """``HOST:PORT``, ``tcp://HOST:PORT``, ``tls://HOST:PORT``, ``ws://HOST[:PORT][/PATH]`` or
    ``wss://…`` (ports 80 and 443 by default) → GatewayAddress; raises UsageError."""
    parts = urlsplit(text if "//" in text else f"tcp://{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    websocket = parts.scheme in ("ws", "wss")
    if websocket and port is None:
        port = 443 if parts.scheme == "wss" else 80
    path = parts.path or "/"
    if (
        parts.scheme not in ("tcp", "tls", "ws", "wss")
        or not parts.hostname
        or not port
        or parts.query
        or parts.fragment
        or parts.username is not None
        or (not websocket and parts.path not in ("", "/"))
    ):
        raise UsageError(f"--gateway must be {GATEWAY_FORMS} (got {text[:60]!r})")
    return GatewayAddress(parts.hostname, port, parts.scheme in ("tls", "wss"), path if websocket else None)


def parse_proxy_address(text: str) -> tuple[tuple[str, int], str | None]:
    """``http://[USER:PASSWORD@]HOST:PORT`` → ((host, port), "user:password" or None); raises
    UsageError without echoing the text (it may hold a password)."""
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or not port or parts.path not in ("", "/") or parts.query:
        raise UsageError("--gateway-proxy must be http://[USER:PASSWORD@]HOST:PORT")
    credentials = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return (parts.hostname, port), credentials


def _warn_unless_bindable(address: str) -> None:
    """Warn when this host has no ``address`` (an exit's --bind) now: its streams fail until it
    has (an interface may come up after the agent, so this is no refusal)."""
    if not address:
        return
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError as error:
        logging.getLogger("ipsx.agent").warning(
            "--bind %s: this host has no such address now (%s): streams through that exit fail until "
            "it has; `ip addr` lists the host's addresses",
            address,
            error.strerror,
        )


def agent_settings(args: argparse.Namespace) -> AgentSettings:
    if not args.gateway:
        raise UsageError(f"--gateway is required to serve ({GATEWAY_FORMS})")
    gateway = parse_gateway_address(args.gateway)
    if args.gateway_ca and not gateway.tls:
        raise UsageError("--gateway-ca needs a tls:// or wss:// gateway")
    proxy, proxy_credentials = parse_proxy_address(args.gateway_proxy) if args.gateway_proxy else (None, None)
    try:
        account = load_key(args.key, os.environ.get("IPSX_KEY_PASSWORD"))
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load the wallet key from {args.key}: {type(error).__name__}") from None
    try:
        defaults = parse_exit(f",country={args.country},type={args.type}", ExitSpec())
        if args.region or args.city or args.asn:
            defaults = ExitSpec(
                "", defaults.country, args.region.lower(), args.city.lower(), args.asn, defaults.type
            )
        exits = tuple(parse_exit(text, defaults) for text in args.bind) or (defaults,)
        ports = parse_ports(args.ports) if args.ports else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        protocols = parse_protocols(args.protocols.split(",")) if args.protocols else None
    except ValueError as error:
        raise UsageError(f"--protocols: {error}") from None
    try:
        blocked_domains, blocked_networks = parse_blocked(args.block)
    except ValueError as error:
        raise UsageError(f"--block: {error}") from None
    policy = ExitPolicy(
        allow_private=args.allow_private,
        allow_smtp=args.allow_smtp,
        ports=ports,
        protocols=protocols,
        blocked_domains=blocked_domains,
        blocked_networks=blocked_networks,
    )
    return AgentSettings(
        gateway_host=gateway.host,
        gateway_port=gateway.port,
        account=account,
        exits=exits,
        policy=policy,
        tls=gateway.tls,
        ca_file=args.gateway_ca,
        websocket_path=gateway.websocket_path,
        proxy=proxy,
        proxy_credentials=proxy_credentials,
        pool_size=max(1, args.pool_size),
        reuse_data=args.reuse_data,
        gateway_region=args.gateway_region,
        limits=agent_limits(args),
        state_file=state_file_for(args.key, args.state_dir),
    )


def agent_limits(args: argparse.Namespace) -> Limits:
    """The caps, rates and hours of ``ipsx provide``'s flags; raises UsageError."""

    def parsed(flag: str, text: str | None, parse: Any) -> Any:
        try:
            return None if text is None else parse(text)
        except ValueError as error:
            raise UsageError(f"{flag}: {error}") from None

    if args.tz is not None:
        try:
            zoneinfo.ZoneInfo(args.tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise UsageError(f"--tz: no time zone named {args.tz[:60]!r} (e.g. Europe/Paris, UTC)") from None
    windows = [text for item in args.hours for text in item.split(",") if text.strip()]
    return Limits(
        cap_day=parsed("--cap-day", args.cap_day, parse_size),
        cap_month=parsed("--cap-month", args.cap_month, parse_size),
        rate_stream=parsed("--rate-stream", args.rate_stream, parse_rate),
        rate_total=parsed("--rate-total", args.rate_total, parse_rate),
        hours=tuple(sorted({parsed("--hours", text, parse_window) for text in windows})),
        tz=args.tz,
    )


def cmd_provide(args: argparse.Namespace, env: Environment) -> None:
    if args.action == "status":
        provide_status(args)
        return
    settings = agent_settings(args)
    if args.payouts_interval <= 0:
        raise UsageError("--payouts-interval must be positive")
    for spec in settings.exits:
        _warn_unless_bindable(spec.bind)
    governor = Governor(
        settings.limits,
        state_file=settings.state_file,
        address=settings.account.address,
        policy=settings.policy,
    )

    async def provide(stop: asyncio.Event) -> None:
        tasks = []
        if args.payouts_api:
            tasks.append(
                asyncio.create_task(
                    keep_payouts_every(
                        args.payouts_api, settings.account, args.payouts_store, args.payouts_interval, stop
                    )
                )
            )
            tasks.append(
                asyncio.create_task(_note_payouts(args.payouts_store, governor, args.payouts_interval, stop))
            )
        try:
            await run_agent(settings, stop, governor=governor)
        finally:
            for task in tasks:
                task.cancel()

    runtime.run(provide)


def _payouts_total(store: Path) -> int | None:
    """The total of the payout proofs kept in ``store`` (base units); None when there is no store.
    Raises OSError or ValueError when it cannot be read."""
    try:
        kept = json.loads(store.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(kept, dict):
        raise ValueError(f"{store} is not a file of payout proofs")
    return sum(int(proof["balance"]) for proof in kept.values())


async def _note_payouts(store: Path, governor: Governor, interval: float, stop: asyncio.Event) -> None:
    """Tell the governor the payout proofs' total every ``interval`` seconds, so the state file
    knows what was earned today (``ipsx provide status``)."""
    while not stop.is_set():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            total = await asyncio.to_thread(_payouts_total, store)
            if total is not None:
                governor.note_payouts(total)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def provide_status(args: argparse.Namespace) -> None:
    """``ipsx provide status``: print what the agent of ``--key`` keeps in its state file."""
    path = state_file_for(args.key, args.state_dir)
    try:
        status = read_status(path)
    except FileNotFoundError:
        raise UsageError(
            f"no state file at {path}: has an agent run with this --key (and --state-dir) here?"
        ) from None
    except (OSError, ValueError, KeyError) as error:
        raise UsageError(f"cannot read the state file {path}: {error}") from None
    try:
        payouts = _payouts_total(args.payouts_store)
    except (OSError, ValueError, KeyError, TypeError):
        payouts = None
    for line in describe(status, payouts=payouts, payouts_store=str(args.payouts_store)):
        print(line)


def cmd_demo(args: argparse.Namespace, env: Environment) -> None:
    from ipsx.demo import DemoOptions, run_demo
    from ipsx.embedded import EmbeddedServiceError

    options = DemoOptions(
        data_dir=args.data_dir,
        http_port=args.http_port,
        socks_port=args.socks_port,
        tunnel_port=args.tunnel_port,
        origin_port=args.origin_port,
        api_port=args.api_port,
        once=args.once,
        chain=args.chain,
    )
    try:
        run_service(lambda stop: run_demo(options, env, stop))
    except EmbeddedServiceError as error:  # no wheel, a port taken, a server that did not start
        raise UsageError(str(error)) from None


def cmd_inspect(args: argparse.Namespace, env: Environment) -> None:
    from ipsx import inspect_command  # mitmproxy is loaded by this command only

    inspect_command.cmd_inspect(args, env)


def cmd_devchain(args: argparse.Namespace, env: Environment) -> None:
    from ipsx import devchain
    from ipsx.devchain_node import StateFileError

    try:
        devchain.run(args)
    except (OSError, StateFileError) as error:
        raise UsageError(str(error)) from None


def cmd_account(args: argparse.Namespace, env: Environment) -> None:
    async def go() -> None:
        pool = await connect_database(env.database)
        try:
            await db.migrate(pool)
            if args.action == "create":
                account = await accounts.create_account(pool, address=args.address, name=args.name)
                print(f"account {account.name} ({account.address}) created")
            elif args.action == "list":
                for account in await accounts.list_accounts(pool):
                    balance = await ledger.balance(pool, ledger.requester_account(account.name))
                    print(
                        f"{account.name:<20} {account.address}  balance {ledger.format_amount(balance)} IPSX"
                    )
            elif args.action == "credit":
                amount = ledger.parse_amount(args.amount)
                if await accounts.get_account(pool, args.name) is None:
                    raise UsageError(f"no account named {args.name!r}")
                reference = args.reference or f"cli-credit-{secrets.token_hex(8)}"
                done = await ledger.credit_account(pool, args.name, amount, reference)
                print(
                    f"credited {ledger.format_amount(amount)} IPSX to {args.name}"
                    if done
                    else f"reference {reference} was already used: nothing credited"
                )
        except BillingError as error:
            raise UsageError(str(error)) from None
        finally:
            await pool.close()

    asyncio.run(go())


def cmd_key(args: argparse.Namespace, env: Environment) -> None:
    async def go() -> None:
        pool = await connect_database(env.database)
        try:
            await db.migrate(pool)
            if args.action == "create":
                scopes = frozenset(part.strip() for part in args.scopes.split(",") if part.strip())
                limit = None if args.spend_limit is None else ledger.parse_amount(args.spend_limit)
                if args.rules:
                    try:
                        parse_rules(args.rules)
                    except TargetingError as error:
                        raise UsageError(f"--rules: {error}") from None
                new = await accounts.create_key(
                    pool,
                    account_name=args.account,
                    label=args.label,
                    scopes=scopes,
                    spend_limit=limit,
                    operator=True,  # this command line is the operator's
                    rules=args.rules or None,
                )
                print(f"key id: {new.key.key_id}\nsecret: {new.secret}\n(the secret is shown only now)")
            elif args.action == "list":
                for key in await accounts.list_keys(pool, args.account):
                    state = "revoked" if key.revoked_at else "active"
                    shown = (
                        "-"
                        if key.spend_limit is None
                        else ledger.format_amount(ledger.Amount(key.spend_limit))
                    )
                    print(
                        f"{key.key_id}  {state:<8} {key.created_at:%Y-%m-%d %H:%M}  "
                        f"{','.join(sorted(key.scopes)):<22} limit {shown:<8} {key.label}"
                        + (f"  rules {key.rules}" if key.rules else "")
                    )
            elif args.action == "revoke":
                print("revoked" if await accounts.revoke_key(pool, args.key_id) else "no such active key")
        except BillingError as error:
            raise UsageError(str(error)) from None
        finally:
            await pool.close()

    asyncio.run(go())


def cmd_wallet(args: argparse.Namespace, env: Environment) -> None:
    out: Path = args.out
    try:
        address = create_key_file(out)
    except FileExistsError:
        raise UsageError(f"{out} exists; not overwriting a wallet") from None
    except OSError as error:
        raise UsageError(f"cannot write {out}: {error.strerror}") from None
    print(f"wallet {address} written to {out}")


def _client_command(args: argparse.Namespace, env: Environment) -> None:
    try:
        run_client_command(args)
    except ClientError as error:
        raise UsageError(str(error)) from None


cmd_order = cmd_deals = cmd_deal = cmd_invoices = cmd_usage = cmd_market = cmd_withdrawal = cmd_pay = (
    cmd_payouts
) = cmd_channel = _client_command


def cmd_reseller(args: argparse.Namespace, env: Environment) -> None:
    from ipsx import reseller_commands

    reseller_commands.cmd_reseller(args, env)


def cmd_chain(args: argparse.Namespace, env: Environment) -> None:
    from ipsx import chain_commands  # web3 is loaded by the chain commands only

    chain_commands.cmd_chain(args, env)


def cmd_reconcile(args: argparse.Namespace, env: Environment) -> None:
    from ipsx import chain_commands

    chain_commands.cmd_reconcile(args, env)


def cmd_verify(args: argparse.Namespace, env: Environment) -> None:
    from ipsx import verify_command

    verify_command.cmd_verify(args, env)
