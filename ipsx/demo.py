"""``ipsx demo``: the whole network on one machine, with nothing to install or configure.

PostgreSQL and Redis come from wheels unless ``IPSX_DATABASE_URL`` / ``IPSX_REDIS_URL`` point
elsewhere; the gateway (with the market in force), a billing worker, the REST API (which runs the
market), three provider agents (127.0.0.2-4, three countries) and a small origin run in this
process. Each demo provider signs in with its wallet and offers its exit; a demo requester is
created and funded, its traffic gets spot deals, and its proxy URLs are printed and written to
``<data-dir>/demo.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from eth_account.signers.local import LocalAccount

from billing import accounts, db, holds, ledger
from billing.worker import WorkerSettings, run_worker
from dashboard.app import running_api
from dashboard.settings import ApiSettings
from gateway.agent.client import run_agent
from gateway.agent.policy import ExitPolicy
from gateway.agent.settings import AgentSettings, ExitSpec, create_key_file, load_key
from gateway.server import running_gateway
from gateway.settings import GatewaySettings
from ipsx.embedded import embedded_postgres, embedded_redis
from ipsx.origin import Origin
from ipsx.sdk import Client
from ipsx.settings import Environment

log = logging.getLogger("ipsx.demo")

DEMO_ACCOUNT = "demo"
DEMO_CREDIT = "1000"  # IPSX
DEMO_EXITS = (
    ExitSpec(bind="127.0.0.2", country="fr", city="paris", type="residential"),
    ExitSpec(bind="127.0.0.3", country="de", city="berlin", type="residential"),
    ExitSpec(bind="127.0.0.4", country="us", city="new_york", type="datacenter"),
)
DEMO_PRICES = ("1", "1.2", "0.8")  # IPSX per GB asked by the three demo providers


@dataclass(frozen=True, slots=True)
class DemoOptions:
    data_dir: Path
    http_port: int = 8080
    socks_port: int = 1080
    tunnel_port: int = 8443
    origin_port: int = 18000
    api_port: int = 8000
    once: bool = False


@contextlib.asynccontextmanager
async def _services(options: DemoOptions, env: Environment) -> AsyncIterator[tuple[str, str]]:
    """(database URL, Redis URL): the configured ones, or embedded ones in the data dir."""
    async with contextlib.AsyncExitStack() as stack:
        if env.database_url:
            database = env.database_url
        else:
            print("starting embedded PostgreSQL (first run initialises it, a few seconds)…", flush=True)
            database = await stack.enter_async_context(embedded_postgres(options.data_dir / "postgres"))
        if env.redis_url:
            redis = env.redis_url
        else:
            print("starting embedded Redis…", flush=True)
            redis = await stack.enter_async_context(embedded_redis(options.data_dir / "redis"))
        yield database, redis


def _wallet(path: Path) -> str:
    """A wallet key file at ``path``, created on first use; returns its address."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return create_key_file(path)
    return str(load_key(path, None).address)


async def _demo_requester(pool: asyncpg.Pool, data_dir: Path) -> tuple[str, str]:
    """The demo account's name and API secret, created and funded once."""
    state_file = data_dir / "demo.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        secret = state.get("secret", "")
        if await accounts.authenticate(pool, DEMO_ACCOUNT, secret) is not None:
            return DEMO_ACCOUNT, secret
    if await accounts.get_account(pool, DEMO_ACCOUNT) is None:
        address = _wallet(data_dir / "wallets" / "requester.key")
        await accounts.create_account(pool, address=address, name=DEMO_ACCOUNT)
    await ledger.credit_account(pool, DEMO_ACCOUNT, ledger.parse_amount(DEMO_CREDIT), "demo-initial-credit")
    new = await accounts.create_key(pool, account_name=DEMO_ACCOUNT, label="demo")
    return DEMO_ACCOUNT, new.secret


async def run_demo(options: DemoOptions, env: Environment, stop: asyncio.Event) -> None:
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        database, redis = await stack.enter_async_context(_services(options, env))
        pool = await db.open_migrated(database, max_size=4)
        stack.push_async_callback(pool.close)
        account, secret = await _demo_requester(pool, data_dir)

        settings = GatewaySettings(
            redis_url=redis,
            database_url=database,
            http_port=options.http_port,
            socks_port=options.socks_port,
            tunnel_port=options.tunnel_port,
            node_id="demo-node",
            market=True,
        )
        # Sign-in messages name the API's host:port, so the port is fixed before the API starts.
        api_port = options.api_port or _free_port()
        api_settings = ApiSettings(
            database_url=database,
            redis_url=redis,
            jwt_secret=secrets.token_urlsafe(32),
            port=api_port,
            siwe_domain=f"127.0.0.1:{api_port}",
            proxy_address=f"127.0.0.1:{options.http_port or 8080}",
        )
        api_port = await stack.enter_async_context(running_api(api_settings))
        api_url = f"http://127.0.0.1:{api_port}"
        ports = await stack.enter_async_context(running_gateway(settings))
        origin = Origin("127.0.0.1", options.origin_port).start()  # 127.0.0.1 only: a demo page
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
        fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=2)
        await _wait_for_exits(redis, len(DEMO_EXITS))
        await asyncio.to_thread(_offer_exits, api_url, wallets, redis)
        _print_banner(state, state_path)
        try:
            if options.once:
                await _self_check(state, pool)
            else:
                await stop.wait()
        finally:
            print("\nstopping…", flush=True)
            agent_stop.set()
            await asyncio.sleep(0.3)  # let the worker ingest the last usage events
            worker_stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def _print_banner(state: dict[str, str], state_path: Path) -> None:
    germany = state["http_proxy"].replace(f"//{state['account']}:", f"//{state['account']}-country-de:")
    print(
        f"""
IPSX demo is running. In another terminal:

  export http_proxy={state["http_proxy"]}
  export HTTP_PROXY=$http_proxy HTTPS_PROXY=$http_proxy https_proxy=$http_proxy
  SOCKS_PROXY={state["socks_proxy"]}

  curl {state["origin"]}                       # a new exit per connection (127.0.0.2-4)
  curl -x "$SOCKS_PROXY" {state["origin"]}
  curl -x "{germany}" {state["origin"]}    # German exits only

Your traffic goes through spot deals with the three demo providers' offers; see them with
  IPSX_TOKEN={state["secret"]} ipsx deals --api {state["api"]}
The REST API is at {state["api"]} (OpenAPI document: {state["api"]}/openapi.json).
The same settings are in {state_path}. Metered usage lands in PostgreSQL (table usage_events).
Ctrl-C stops everything.
""",
        flush=True,
    )


async def _self_check(state: dict[str, str], pool: asyncpg.Pool) -> None:
    """Send one request over each protocol and print what was metered (``--once``)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-x", state["http_proxy"], state["origin"], stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    requester = ledger.requester_account(state["account"])
    available, reserved = await ledger.balance(pool, requester), await holds.reserved(pool, requester)
    print(
        f"demo balance:   {ledger.format_amount(ledger.Amount(available + reserved))} IPSX "
        f"({ledger.format_amount(reserved)} of it reserved by the spot deals this request opened)"
    )
    print(f"via HTTP proxy: {out.decode().strip()}")
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-x", state["socks_proxy"], state["origin"], stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    print(f"via SOCKS5:     {out.decode().strip()}")
    for _ in range(50):
        rows = await pool.fetch(
            "SELECT protocol, exit_id, deal_id, bytes_up, bytes_down FROM usage_events "
            "WHERE requester = $1 ORDER BY closed_at DESC LIMIT 2",
            state["account"],
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
