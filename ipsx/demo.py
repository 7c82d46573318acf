"""``ipsx demo``: the whole network on one machine, with nothing to install or configure.

PostgreSQL and Redis come from wheels unless ``IPSX_DATABASE_URL`` / ``IPSX_REDIS_URL`` point
elsewhere; the gateway (with the market in force), a billing worker, the REST API (which runs the
market), three provider agents (127.0.0.2-4, three countries) and a small origin run in this
process. Each demo provider signs in with its wallet and offers its exit; a demo requester is
created, its traffic gets spot deals, and its proxy URLs are printed and written to
``<data-dir>/demo.json``.

The demo requester pays on-chain (``ipsx.demo_chain``): the contracts are deployed on a local
chain kept in the data dir (anvil when ``make setup`` installed it, else ``ipsx devchain``), the
requester opens a channel to the operator with 1000 IPSX, the chain watcher credits the deposit,
the API invoices its settled deals and its payment agent pays them with balance proofs. Only a
data dir whose requester was funded by an operator credit (before the devchain existed) or whose
chain cannot start goes without: never both, since the invoicer bills every settled deal of a
requester with a channel, and usage a credit paid for would be paid a second time from the deposit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import secrets
import shlex
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
from eth_account.signers.local import LocalAccount

from billing import accounts, channels, db, holds, ledger, payments
from billing.worker import WorkerSettings, run_worker
from dashboard.app import running_api
from dashboard.settings import ApiSettings
from gateway.agent.fleet import run_agent
from gateway.agent.policy import ExitPolicy
from gateway.agent.settings import AgentSettings, ExitSpec, create_key_file, load_key
from gateway.server import running_gateway
from gateway.settings import GatewaySettings
from ipsx import demo_chain
from ipsx.commands import UsageError
from ipsx.demo_chain import ChainChoice, ChainUnavailable, DemoChain
from ipsx.embedded import free_port
from ipsx.embedded_postgres import embedded_postgres
from ipsx.embedded_redis import embedded_redis
from ipsx.listen import ListenError, check_free, listening
from ipsx.origin import Origin
from ipsx.sdk import ApiError, Client
from ipsx.settings import Environment

log = logging.getLogger("ipsx.demo")

DEMO_ACCOUNT = "demo"
DEMO_CREDIT = "1000"  # IPSX, when the demo does not pay on-chain
DEMO_CREDIT_REFERENCE = "demo-initial-credit"
DEMO_EXITS = (
    ExitSpec(bind="127.0.0.2", country="fr", city="paris", type="residential"),
    ExitSpec(bind="127.0.0.3", country="de", city="berlin", type="residential"),
    ExitSpec(bind="127.0.0.4", country="us", city="new_york", type="datacenter"),
)
DEMO_PRICES = ("1", "1.2", "0.8")  # IPSX per GB asked by the three demo providers
SPOT_DEAL_SECONDS = 60  # the demo's traffic is settled, invoiced and paid within a minute
PAID_DEAL_SECONDS = 5  # the deal `--once` buys to show it paid: the market's shortest
PAYMENT_WAIT_POLLS = 240  # of 0.25 s: the deal's 5 s, the market's settle grace, invoicing, paying
PAYOUT_WAIT_POLLS = 20  # of 0.25 s: the invoicing passes after the one that billed the deal
LOOPBACK = "127.0.0.1"  # where the demo's gateway, API and origin listen
API_PORT_ATTEMPTS = 3  # free ports tried for --api-port 0, each of which another process may take


@dataclass(frozen=True, slots=True)
class DemoOptions:
    data_dir: Path
    http_port: int = 8080
    socks_port: int = 1080
    tunnel_port: int = 8443
    origin_port: int = 18000
    api_port: int = 8000
    once: bool = False
    chain: ChainChoice = "auto"  # the node of a new data dir's chain: anvil when installed, else devchain


@contextlib.asynccontextmanager
async def _services(options: DemoOptions, env: Environment) -> AsyncIterator[tuple[str, str, list[str]]]:
    """(database URL, Redis URL, the ones of those started here): the configured ones, or
    embedded ones in the data dir.

    A URL that names one of this data dir's embedded servers as an earlier run started it (its
    port changes every run) came from ``demo.env`` loaded into the shell: it is not a configured
    service, and the embedded server is started again.
    """
    embedded = _embedded_urls(options.data_dir)
    started: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        if env.database_url and env.database_url not in embedded:
            database = env.database_url
        else:
            first = "" if (options.data_dir / "postgres").exists() else " (the first run initialises it)"
            print(f"starting embedded PostgreSQL{first}…", flush=True)
            database = await stack.enter_async_context(embedded_postgres(options.data_dir / "postgres"))
            started.append(database)
        if env.redis_url and env.redis_url not in embedded:
            redis = env.redis_url
        else:
            print("starting embedded Redis…", flush=True)
            redis = await stack.enter_async_context(embedded_redis(options.data_dir / "redis"))
            started.append(redis)
        yield database, redis, started


def _embedded_urls(data_dir: Path) -> set[str]:
    """The URLs of the embedded servers the data dir's last run started (``demo.json``)."""
    try:
        state = json.loads((data_dir / "demo.json").read_text())
        return {str(url) for url in state.get("embedded_urls", [])}
    except (OSError, ValueError, AttributeError):
        return set()


def _wallet(path: Path) -> str:
    """A wallet key file at ``path``, created on first use; returns its address."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return create_key_file(path)
    return str(load_key(path, None).address)


async def _demo_requester(pool: asyncpg.Pool, data_dir: Path, *, credit: bool) -> tuple[str, str]:
    """The demo account's name and API secret, created once (and with ``credit``, funded by an
    operator credit once)."""
    state_file = data_dir / "demo.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        secret = state.get("secret", "")
        if await accounts.authenticate(pool, DEMO_ACCOUNT, secret) is not None:
            return DEMO_ACCOUNT, secret
    if await accounts.get_account(pool, DEMO_ACCOUNT) is None:
        address = _wallet(data_dir / "wallets" / "requester.key")
        await accounts.create_account(pool, address=address, name=DEMO_ACCOUNT)
    if credit:
        await ledger.credit_account(
            pool, DEMO_ACCOUNT, ledger.parse_amount(DEMO_CREDIT), DEMO_CREDIT_REFERENCE
        )
    new = await accounts.create_key(pool, account_name=DEMO_ACCOUNT, label="demo")
    return DEMO_ACCOUNT, new.secret


async def _payment_chain(
    stack: contextlib.AsyncExitStack, pool: asyncpg.Pool, data_dir: Path, want: ChainChoice
) -> DemoChain | None:
    """The demo's chain with its contracts and the requester's channel, its node kept running in
    ``stack``; ``None``, said why, when the demo cannot pay on-chain."""
    off = "on-chain payments are off:"
    if await pool.fetchval("SELECT 1 FROM ledger_movements WHERE reference = $1", DEMO_CREDIT_REFERENCE):
        print(f"{off} this data dir's demo requester was funded by an operator credit "
              "(remove the data dir for a demo that pays on-chain)", flush=True)  # fmt: skip
        return None
    logging.getLogger("web3.providers").setLevel(logging.WARNING)
    requester = _wallet(data_dir / "wallets" / "requester.key")
    providers = [_wallet(data_dir / "wallets" / f"provider{i}.key") for i in range(1, len(DEMO_EXITS) + 1)]
    anvil = demo_chain.anvil_command()
    try:
        node = demo_chain.choose_node(data_dir / "chain", anvil, want)
        if node.name == "devchain" and anvil is None:
            print("anvil is not installed (`make setup` installs it): the demo chain runs on "
                  "ipsx devchain (eth-tester, in its own process)", flush=True)  # fmt: skip
        rpc_url = await stack.enter_async_context(demo_chain.running_node(node, data_dir / "chain"))
        print(f"chain: {node.name} at {rpc_url} (state kept in {data_dir / 'chain'})", flush=True)
        chain = await asyncio.to_thread(
            demo_chain.prepare,
            rpc_url,
            data_dir,
            load_key(data_dir / "wallets" / "requester.key", None),
            providers,
        )
    except ChainUnavailable as why:
        print(f"{off} {why}", flush=True)
        return None
    done = "deployed" if chain.deployed else "deployed by an earlier run"
    print(f"contracts {done} on chain {chain.chain_id} (recorded in {chain.deployment_file}):", flush=True)
    for name, address in chain.contracts.items():
        print(f"  {name:<16} {address}")
    verb = "opened" if chain.opened else "opened by an earlier run"
    print(f"channel {chain.channel_id} {verb}: demo wallet {requester} -> operator {chain.operator}")
    deposit = ledger.format_amount(ledger.Amount(demo_chain.PAYOUT_DEPOSIT))
    print(f"payout channels: operator -> each of the {len(providers)} demo providers, {deposit} IPSX each")
    return chain


async def _report_deposit(pool: asyncpg.Pool, chain: DemoChain) -> None:
    deposit = await demo_chain.credited_deposit(pool, chain.channel_id)
    if deposit is None:
        print("the chain watcher has not credited the channel's deposit yet", flush=True)
        return
    print(
        f"deposit credited by the chain watcher: {ledger.format_amount(ledger.Amount(deposit))} IPSX "
        f"to {DEMO_ACCOUNT}'s account",
        flush=True,
    )


def _payment_settings(chain: DemoChain | None) -> dict[str, Any]:
    """The API's payment options: with a chain, its market node invoices channel-funded
    requesters every half second and signs providers' payouts with the operator's wallet."""
    if chain is None:
        return {}
    return {
        "channels_address": chain.channels,
        "chain_id": chain.chain_id,
        "operator_key": chain.operator_key,
        "invoice_interval": 0.5,
    }


def _hold_data_dir(stack: contextlib.ExitStack, data_dir: Path) -> None:
    """Lock ``data_dir`` for this demo (released when the process ends, however it ends)."""
    handle = stack.enter_context((data_dir / "demo.lock").open("a"))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(
            f"another ipsx demo is running on {data_dir}: stop it (Ctrl-C), or give this one a"
            " --data-dir of its own (and ports of its own)"
        ) from None


def _check_ports(options: DemoOptions) -> None:
    """Raise ListenError for the first of the demo's ports that is taken (or otherwise cannot be
    listened on) now, before the services, the chain and the contracts take their time to start."""
    for option, port in (
        ("--http-port", options.http_port),
        ("--socks-port", options.socks_port),
        ("--tunnel-port", options.tunnel_port),
        ("--origin-port", options.origin_port),
        ("--api-port", options.api_port),
    ):
        check_free(option, LOOPBACK, port)


async def run_demo(options: DemoOptions, env: Environment, stop: asyncio.Event) -> None:
    """Run the demo until ``stop`` (with ``options.once``, until its checks are done). Raises
    UsageError when another demo holds the data dir, ListenError when one of its ports cannot be
    listened on."""
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        _hold_data_dir(held, data_dir)  # first: a demo on this data dir holds the ports too
        _check_ports(options)
        await _run_demo(options, env, stop, data_dir)


async def _run_demo(options: DemoOptions, env: Environment, stop: asyncio.Event, data_dir: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        database, redis, embedded = await stack.enter_async_context(_services(options, env))
        pool = await db.open_migrated(database, max_size=4)
        stack.push_async_callback(pool.close)
        chain = await _payment_chain(stack, pool, data_dir, options.chain)
        # A data dir whose requester has a channel is never credited, even when its chain is gone.
        credit = chain is None and not (data_dir / "chain.json").exists()
        account, secret = await _demo_requester(pool, data_dir, credit=credit)
        if chain is not None:
            await stack.enter_async_context(demo_chain.running_watcher(pool, chain))
            await _report_deposit(pool, chain)

        settings = GatewaySettings(
            redis_url=redis,
            database_url=database,
            http_port=options.http_port,
            socks_port=options.socks_port,
            tunnel_port=options.tunnel_port,
            node_id="demo-node",
            market=True,
        )

        def api_settings(port: int) -> ApiSettings:
            return ApiSettings(
                database_url=database,
                redis_url=redis,
                jwt_secret=secrets.token_urlsafe(32),
                port=port,
                siwe_domain=f"127.0.0.1:{port}",
                proxy_address=f"127.0.0.1:{options.http_port or 8080}",
                socks_address=f"127.0.0.1:{options.socks_port or 1080}",
                web_demo_account=DEMO_ACCOUNT,  # the dashboard's one-click "Enter the demo"
                spot_duration_s=SPOT_DEAL_SECONDS,
                **_payment_settings(chain),
            )

        api_port = await _start_api(stack, options.api_port, api_settings)
        api_url = f"http://127.0.0.1:{api_port}"
        ports = await stack.enter_async_context(running_gateway(settings))
        with listening("--origin-port", LOOPBACK, options.origin_port):
            origin = Origin(LOOPBACK, options.origin_port).start()  # 127.0.0.1 only: a demo page
        stack.callback(origin.stop)

        tasks: list[asyncio.Task[None]] = []
        worker_stop = asyncio.Event()
        tasks.append(
            asyncio.create_task(
                run_worker(WorkerSettings(redis_url=redis, database_url=database), stop=worker_stop)
            )
        )
        agent_stop = asyncio.Event()
        wallets = []
        for index, spec in enumerate(DEMO_EXITS, start=1):
            key_path = data_dir / "wallets" / f"provider{index}.key"
            _wallet(key_path)
            wallets.append(load_key(key_path, None))
            agent = AgentSettings(
                gateway_host="127.0.0.1",
                gateway_port=ports.tunnel,
                account=load_key(key_path, None),
                exits=(spec,),
                policy=ExitPolicy(allow_private=True),
                pool_size=8,
            )
            tasks.append(asyncio.create_task(run_agent(agent, agent_stop)))

        http_proxy = f"http://{account}:{secret}@127.0.0.1:{ports.http}"
        socks_proxy = f"socks5h://{account}:{secret}@127.0.0.1:{ports.socks}"
        state = {
            "account": account,
            "secret": secret,
            "http_proxy": http_proxy,
            "socks_proxy": socks_proxy,
            "origin": origin.url("/ip"),
            "api": api_url,
            "database_url": database,
            "redis_url": redis,
        }
        state_path = data_dir / "demo.json"
        # the embedded servers' URLs too, so that demo.env loaded in a shell names no service
        _write_private(state_path, json.dumps({**state, "embedded_urls": embedded}, indent=2))
        _write_private(data_dir / "demo.env", _env_file(state, chain))
        await _wait_for_exits(redis, len(DEMO_EXITS))
        await asyncio.to_thread(_offer_exits, api_url, wallets, redis)
        if chain is not None:
            requester_wallet = load_key(data_dir / "wallets" / "requester.key", None)
            await stack.enter_async_context(
                demo_chain.running_payment_agent(api_url, secret, requester_wallet)
            )
        if options.once:
            print("IPSX demo is up: one request over each protocol…", flush=True)
        else:
            _print_banner(state, data_dir, chain)
        try:
            if options.once:
                await _self_check(state, pool)
                if chain is not None:
                    await _payment_check(state, pool, chain)
            else:
                await stop.wait()
        finally:
            print("\nstopping…", flush=True)
            agent_stop.set()
            await asyncio.sleep(0.3)  # let the worker ingest the last usage events
            worker_stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _start_api(
    stack: contextlib.AsyncExitStack, port: int, settings_for: Callable[[int], ApiSettings]
) -> int:
    """Start the API on ``port`` in ``stack``; returns its port. Sign-in messages name the API's
    host:port, so with ``port`` 0 a free one is picked before the API starts, and picked again
    when another process takes it first. Raises ListenError (for ``--api-port``)."""
    for attempt in range(1, API_PORT_ATTEMPTS + 1):
        chosen = port or free_port()
        try:
            return await stack.enter_async_context(running_api(settings_for(chosen)))
        except ListenError as error:
            if port or error.errno != errno.EADDRINUSE or attempt == API_PORT_ATTEMPTS:
                raise ListenError("--api-port", error.host, error.port, error.os_error) from None
            log.warning("port %d was taken before the API could listen on it; picking another", chosen)
    raise AssertionError("unreachable")  # the last attempt returns or raises


def _offer_exits(api_url: str, wallets: list[LocalAccount], redis_url: str) -> None:
    """Each demo provider signs in with its wallet (over the API, as a real one would) and offers
    its exit at its price, shared by up to 16 requesters at once."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        owned: dict[str, str] = {}
        for key in client.scan_iter(match="ipsx:{pool}:exit:*"):
            owner = client.hget(key, "provider")
            if isinstance(owner, str):
                owned[owner] = str(key).rsplit(":", 1)[1]
    finally:
        client.close()
    for wallet, price in zip(wallets, DEMO_PRICES, strict=True):
        exit_id = owned.get(wallet.address)
        if exit_id is None:
            log.warning("the exit of %s is not online; it makes no offer", wallet.address)
            continue
        Client.sign_in(api_url, wallet).place_offer(
            exit_id=exit_id,
            price_per_gb=str(ledger.parse_amount(price)),
            sharing="shared",
            shared_capacity=16,
            idempotency_key=f"demo-offer-{exit_id}",
        )


async def _wait_for_exits(redis_url: str, count: int) -> None:
    import redis.asyncio as aioredis

    from pool.registry import ExitRegistry

    client = aioredis.Redis.from_url(redis_url)
    try:
        registry = ExitRegistry(client)
        for _ in range(100):
            if len(await registry.live_ids()) >= count:
                return
            await asyncio.sleep(0.1)
        log.warning("only %d of %d demo exits came online", len(await registry.live_ids()), count)
    finally:
        await client.aclose()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (also when it existed before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _env_file(state: dict[str, str], chain: DemoChain | None) -> str:
    """The demo's settings as shell variables, for `set -a; . .ipsx/demo.env` before ipsx
    commands: the API and its key, the databases (``ipsx reconcile``), the chain's node."""
    settings = {
        "IPSX_API_URL": state["api"],
        "IPSX_TOKEN": state["secret"],
        "IPSX_DATABASE_URL": state["database_url"],
        "IPSX_REDIS_URL": state["redis_url"],
    }
    if chain is not None:
        settings["IPSX_RPC_URL"] = chain.rpc_url
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in settings.items())


def _ipsx_command() -> str:
    """How to run ``ipsx`` from the current directory: the name when it is on PATH, else the
    path of this environment's script (``.venv/bin/ipsx`` for a checkout's ``make demo``)."""
    script = Path(sys.prefix) / "bin" / "ipsx"
    found = shutil.which("ipsx")
    if found is not None and Path(found).resolve() == script.resolve():
        return "ipsx"
    return _shown(script)


def _print_banner(state: dict[str, str], data_dir: Path, chain: DemoChain | None) -> None:
    germany = state["http_proxy"].replace(f"//{state['account']}:", f"//{state['account']}-country-de:")
    sticky = state["http_proxy"].replace(f"//{state['account']}:", f"//{state['account']}-session-s1:")
    ipsx = _ipsx_command()
    shown_dir = _shown(data_dir)
    print(
        f"""
IPSX demo is running. Dashboard: {state["api"]}/  (click "Enter the demo", then run the curl
below: the overview's chart moves within a second). In another terminal:

  export http_proxy={state["http_proxy"]}
  export HTTP_PROXY=$http_proxy HTTPS_PROXY=$http_proxy https_proxy=$http_proxy
  SOCKS_PROXY={state["socks_proxy"]}

  curl {state["origin"]}                       # a new exit per connection (127.0.0.2-4)
  curl -x "$SOCKS_PROXY" {state["origin"]}
  curl -x "{germany}" {state["origin"]}    # German exits only
  curl -x "{sticky}" {state["origin"]}    # sticky: the same exit each time

Your traffic goes through spot deals with the three demo providers' offers ({SPOT_DEAL_SECONDS} s each).
The ipsx commands read the demo's settings (API, key, databases) from {shown_dir}/demo.env:
  set -a; . {shown_dir}/demo.env; set +a
  {ipsx} deals                         # your deals, newest first
  {ipsx} usage                         # your metered streams
The REST API is at {state["api"]} (OpenAPI document: {state["api"]}/openapi.json).
{shown_dir}/demo.json and demo.env (mode 0600) hold the passwords of PostgreSQL
({without_password(state["database_url"])}) and Redis ({without_password(state["redis_url"])}).
Metered usage lands in PostgreSQL (table usage_events).{"" if chain is None else _chain_banner(ipsx, chain)}
Ctrl-C stops everything.
""",
        flush=True,
    )


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is under it (shorter to type)."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def without_password(url: str) -> str:
    """``url`` without the password of its user part, if any, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=user + parts.netloc.rpartition("@")[2]).geturl()


def curl_command(proxy_url: str, target: str) -> tuple[list[str], bytes]:
    """The argv of a curl fetching ``target`` through ``proxy_url``, and the config to give it on
    stdin (``-K -``): the proxy's user and password go in the config, for argv is public (``ps``)."""
    parts = urlsplit(proxy_url)
    proxy = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    argv = ["curl", "-sS", "-K", "-", "-x", proxy, target]
    if parts.username is None:
        return argv, b""
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    quoted = credentials.replace("\\", "\\\\").replace('"', '\\"')  # curl's config-file quoting
    return argv, f'proxy-user = "{quoted}"\n'.encode()


async def _curl(proxy_url: str, target: str) -> str:
    """What curl fetched from ``target`` through ``proxy_url`` (stripped), with its credentials kept
    out of its argv."""
    argv, config = curl_command(proxy_url, target)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate(config)
    return out.decode().strip()


def _chain_banner(ipsx: str, chain: DemoChain) -> str:
    return f"""
Payments are on-chain: when a deal settles, the API invoices it and the demo's payment agent
pays with a balance proof on channel {chain.channel_id}.
  {ipsx} invoices                      # invoices and whether they are paid
  {ipsx} reconcile --deployment {_shown(chain.deployment_file)}   # the ledger against the chain"""


async def _self_check(state: dict[str, str], pool: asyncpg.Pool) -> None:
    """Send one request over each protocol and print what was metered (``--once``)."""
    started = dt.datetime.now(dt.UTC)  # the gateway's clock (this process's) stamps the streams
    via_http = await _curl(state["http_proxy"], state["origin"])
    requester = ledger.requester_account(state["account"])
    available, reserved = await ledger.balance(pool, requester), await holds.reserved(pool, requester)
    print(
        f"demo balance:   {ledger.format_amount(ledger.Amount(available + reserved))} IPSX "
        f"({ledger.format_amount(reserved)} of it reserved by the spot deals this request opened)"
    )
    print(f"via HTTP proxy: {via_http}")
    print(f"via SOCKS5:     {await _curl(state['socks_proxy'], state['origin'])}")
    for _ in range(50):
        rows = await pool.fetch(
            "SELECT protocol, exit_id, deal_id, bytes_up, bytes_down FROM usage_events "
            "WHERE requester = $1 AND opened_at >= $2 ORDER BY closed_at DESC LIMIT 2",
            state["account"],
            started,
        )
        if len(rows) >= 2:
            for row in rows:
                print(
                    f"metered: {row['protocol']:<7} exit {row['exit_id']} deal {row['deal_id']} "
                    f"up {row['bytes_up']} B down {row['bytes_down']} B"
                )
            return
        await asyncio.sleep(0.1)
    print("usage not yet ingested")


async def _payment_check(state: dict[str, str], pool: asyncpg.Pool, chain: DemoChain) -> None:
    """Buy a 5-second deal, send one request through it, and wait until the deal is settled,
    invoiced and paid with a balance proof (``--once`` with a chain)."""
    client = Client(state["api"], token=state["secret"])
    try:
        placed = await asyncio.to_thread(
            client.place_request,
            filters={"protocol": "http"},
            ips=1,
            duration_s=PAID_DEAL_SECONDS,
            traffic_bytes=10**6,
            max_price_per_gb=str(ledger.parse_amount("2")),
            rest=False,
        )
    except (ApiError, OSError) as error:
        print(f"the market refused the paid request: {error}", flush=True)
        return
    if not placed["deals"]:
        print("no deal for the paid request: no exit offered itself")
        return
    deal_id = placed["deals"][0]["deal_id"]
    user = f"//{state['account']}:"
    pinned = state["http_proxy"].replace(user, f"//{state['account']}-order-{placed['order_id']}:")
    got = await _curl(pinned, state["origin"])
    print(f"via a {PAID_DEAL_SECONDS}-second deal {deal_id}: {got}; waiting for it to settle and be paid…",
          flush=True)  # fmt: skip
    for _ in range(PAYMENT_WAIT_POLLS):
        for invoice in await payments.listing(pool, account=state["account"], state="paid"):
            if deal_id in invoice.deal_ids:
                held = await channels.get(pool, invoice.channel_id)
                proof = "none" if held is None else ledger.format_amount(held.proof_balance)
                print(
                    f"invoice {invoice.invoice_id} paid with a balance proof: "
                    f"{ledger.format_amount(invoice.amount)} IPSX for {len(invoice.deal_ids)} deal(s), "
                    f"cumulative {ledger.format_amount(invoice.cumulative)} IPSX on channel "
                    f"{invoice.channel_id} (the operator holds a proof of {proof} IPSX)",
                    flush=True,
                )
                await _report_payout(pool, chain)
                return
        await asyncio.sleep(0.25)
    print(f"deal {deal_id} was not invoiced and paid in time", flush=True)


async def _report_payout(pool: asyncpg.Pool, chain: DemoChain) -> None:
    """Print the payout proofs the operator signed for the providers' earnings (shortly after
    the invoicing pass that billed the deal)."""
    for _ in range(PAYOUT_WAIT_POLLS):
        held = [await channels.get(pool, channel_id) for channel_id in chain.payout_channels.values()]
        promised = [channel for channel in held if channel is not None and channel.proof_balance > 0]
        if promised:
            for channel in promised:
                print(
                    f"payout: the operator signed a balance proof of "
                    f"{ledger.format_amount(channel.proof_balance)} IPSX to provider {channel.receiver} "
                    f"on channel {channel.channel_id}",
                    flush=True,
                )
            return
        await asyncio.sleep(0.25)
    print("payout: no proof signed for the providers yet", flush=True)
