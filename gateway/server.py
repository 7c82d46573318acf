"""One gateway node: the requester front, the provider tunnel endpoint, and their wiring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import Redis

from billing import db, reseller_terms, resellers
from billing.accounts import KeyCache
from billing.metrics import new_registry, redis_problem, serving_metrics
from billing.usage import UsagePublisher
from gateway.allowance import AllowanceGuard
from gateway.conn import Listener
from gateway.exits import ExitDialer
from gateway.front import Brand, Front
from gateway.metrics import GatewayCollector, GatewayStats
from gateway.settings import GatewaySettings
from gateway.tickets import TicketKey
from gateway.tunnel import TunnelHub
from ipsx.listen import listening
from matching.routing import DealRoutes
from pool.bans import BanBook
from pool.client import redis_from_url
from pool.health import ExitHealth
from pool.nodes import NodeInfo, NodeRegistry
from pool.registry import ExitRegistry
from pool.select import Selector

log = logging.getLogger("ipsx.gateway")


@dataclass(frozen=True, slots=True)
class GatewayPorts:
    """Where a started node listens (the real ports when the settings asked for port 0)."""

    http: int
    socks: int
    tunnel: int
    metrics: int | None = None  # None: metrics not served (settings.metrics_port is None)
    resellers: dict[str, int] = field(default_factory=dict)  # reseller account name → its port


@contextlib.asynccontextmanager
async def running_gateway(settings: GatewaySettings) -> AsyncIterator[GatewayPorts]:
    """Start a gateway node; on exit stop accepting, cut open streams, flush usage, close.

    Resources are opened in order and closed in reverse, whatever fails in between. Raises
    :class:`ipsx.listen.ListenError`, naming the option of the port, when a port cannot be bound.
    """
    async with contextlib.AsyncExitStack() as stack:
        redis = redis_from_url(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        pg = await db.connect(settings.database_url, min_size=1, max_size=settings.db_pool)
        stack.push_async_callback(pg.close)
        publisher = UsagePublisher(redis)
        await publisher.start()
        stack.push_async_callback(publisher.close)

        registry = ExitRegistry(redis, heartbeat_ttl=settings.heartbeat_ttl)
        boot = TicketKey.new_boot()
        selector_ref: list[Selector] = []
        health = ExitHealth(redis, settings.node_id)
        await health.start()
        stack.push_async_callback(health.close)  # after the drain: the last streams' records are written
        hub = TunnelHub(
            settings,
            registry,
            publisher,
            tickets=await TicketKey.shared(redis),
            boot=boot,
            on_change=lambda: selector_ref[0].invalidate(),
            on_login=health.reconnected,
        )
        selector = Selector(
            redis,
            settings.node_id,
            is_available=hub.is_available,
            load=hub.load,
            heartbeat_ttl=settings.heartbeat_ttl,
            cache_ttl=settings.candidate_cache_ttl,
            health=health,
        )
        selector_ref.append(selector)
        stack.push_async_callback(hub.close)

        keys = KeyCache(pg, ttl=settings.auth_cache_ttl)
        stats = GatewayStats()
        guard = AllowanceGuard(redis, interval=settings.allowance_interval) if settings.market else None
        if guard is not None:  # stopped after the drain: the last streams' bytes are counted too
            guard_stop = asyncio.Event()
            guarding = asyncio.create_task(guard.run(guard_stop))
            stack.push_async_callback(_stop_task, guard_stop, guarding)
        dialer = ExitDialer(
            hub,
            selector,
            publisher,
            node=settings.node_id,
            max_attempts=settings.max_attempts,
            routes=DealRoutes(redis) if settings.market else None,
            guard=guard,
            bans=BanBook(redis),
            ban_ttl=settings.ban_ttl,
            health=health,
            stats=stats,
        )
        front = Front(settings, dialer, keys.check, stats=stats)
        stack.callback(front.abort_all)
        branded = await _reseller_fronts(settings, pg, dialer, stats)
        for _, reseller_front in branded:
            stack.callback(reseller_front.abort_all)

        tunnel_port = await hub.start(settings.tunnel_host, settings.tunnel_port)
        nodes = NodeRegistry(redis, ttl=settings.heartbeat_ttl)
        me = NodeInfo(settings.node_id, settings.advertised_tunnel(tunnel_port), boot, settings.region)
        await _announce(nodes, me, hub)
        announcer = asyncio.create_task(_keep_announcing(nodes, me, hub, settings.heartbeat_interval))
        stack.push_async_callback(_withdraw, nodes, me, announcer)

        reuse = settings.reuse_port
        http = Listener(front.handle)
        with listening("--http-port", settings.host, settings.http_port):
            http_port = await http.start(settings.host, settings.http_port, reuse_port=reuse)
        stack.push_async_callback(http.close)
        socks = Listener(front.handle)
        with listening("--socks-port", settings.host, settings.socks_port):
            socks_port = await socks.start(settings.host, settings.socks_port, reuse_port=reuse)
        stack.push_async_callback(socks.close)
        listeners = [http, socks]
        reseller_ports: dict[str, int] = {}
        for (name, port), (_, reseller_front) in zip(settings.reseller_ports, branded, strict=True):
            listener = Listener(reseller_front.handle)
            with listening(f"--reseller-port {name}={port}", settings.host, port):
                reseller_ports[name] = await listener.start(settings.host, port, reuse_port=reuse)
            stack.push_async_callback(listener.close)
            listeners.append(listener)
        metrics_port = None
        if settings.metrics_port is not None:  # served until the drain is over: /readyz says 503 then
            collector = GatewayCollector(
                stats, node=settings.node_id, front=front, hub=hub, publisher=publisher
            )
            metrics_port = await stack.enter_async_context(
                serving_metrics(
                    settings.metrics_host,
                    settings.metrics_port,
                    new_registry(collector),
                    ready=lambda: _not_ready(redis, tuple(listeners)),
                )
            )
        # Runs first on the way out: stop taking clients, leave the registry, let streams finish.
        fronts = (front, *(reseller_front for _, reseller_front in branded))
        stack.push_async_callback(_drain, settings, tuple(listeners), fronts, nodes, me, announcer)

        sweeper = asyncio.create_task(_sweep(registry, settings.heartbeat_interval))
        stack.callback(sweeper.cancel)
        log.info(
            "gateway %s: http proxy on %s:%d, socks5 on %s:%d, provider tunnels on %s:%d",
            settings.node_id,
            settings.host,
            http_port,
            settings.host,
            socks_port,
            settings.tunnel_host,
            tunnel_port,
        )
        for (name, _), (reseller, _) in zip(settings.reseller_ports, branded, strict=True):
            log.info(
                "reseller %s (%s): listener on %s:%d",
                name,
                reseller.brand,
                settings.host,
                reseller_ports[name],
            )
        yield GatewayPorts(
            http=http_port,
            socks=socks_port,
            tunnel=tunnel_port,
            metrics=metrics_port,
            resellers=reseller_ports,
        )


async def _reseller_fronts(
    settings: GatewaySettings, pg: asyncpg.Pool, dialer: ExitDialer, stats: GatewayStats
) -> list[tuple[resellers.Reseller, Front]]:
    """A front per white-label listener of the settings: its brand, its sub-users' credentials
    and standing. Raises ValueError for a name that is no reseller's."""
    fronts = []
    for name, _ in settings.reseller_ports:
        reseller = await resellers.get_reseller(pg, name)
        if reseller is None:
            raise ValueError(f"--reseller-port: no reseller is called {name!r}")
        keys = KeyCache(
            pg, ttl=settings.auth_cache_ttl, lookup=reseller_terms.subuser_lookup(reseller.account_id)
        )
        standing = reseller_terms.StandingCache(pg, ttl=settings.standing_ttl)
        brand = Brand(reseller.brand, reseller.header_token)
        fronts.append(
            (reseller, Front(settings, dialer, keys.check, stats=stats, brand=brand, admit=standing.refusal))
        )
    return fronts


async def _not_ready(redis: Redis, listeners: tuple[Listener, ...]) -> list[str]:
    """Why the node should not get clients: its proxy ports stopped accepting (it is draining),
    or Redis (exits, sessions, usage) does not answer."""
    problems = []
    if not all(listener.server is not None and listener.server.is_serving() for listener in listeners):
        problems.append("proxy ports not accepting")
    redis_down = await redis_problem(redis)
    if redis_down is not None:
        problems.append(redis_down)
    return problems


async def _stop_task(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await task


async def _drain(
    settings: GatewaySettings,
    listeners: tuple[Listener, ...],
    fronts: tuple[Front, ...],
    nodes: NodeRegistry,
    me: NodeInfo,
    announcer: asyncio.Task[None],
) -> None:
    """Graceful stop: no new clients, out of the node registry (agents and balancers move on),
    then up to ``drain_timeout`` for the streams in flight; whatever is left is cut after."""
    for listener in listeners:
        listener.stop_accepting()
    for front in fronts:
        front.drain()
    announcer.cancel()
    try:
        await nodes.withdraw(me.node)
    except Exception:  # Redis down: the node ages out of the registry on its own
        log.warning("could not withdraw node %s from the registry", me.node)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.drain_timeout

    def busy() -> int:
        return sum(front.busy for front in fronts)

    if busy():
        log.info("draining %d stream(s) for up to %.0fs", busy(), settings.drain_timeout)
    # Polled: streams end in two places (splices, plain exchanges), and only while stopping.
    while busy() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    if busy():
        log.warning("cutting %d stream(s) still open after the drain", busy())


async def _announce(nodes: NodeRegistry, me: NodeInfo, hub: TunnelHub) -> None:
    await nodes.announce(me)
    hub.set_nodes(await nodes.live())


async def _keep_announcing(nodes: NodeRegistry, me: NodeInfo, hub: TunnelHub, interval: float) -> None:
    """Heartbeat this node in the node registry and pass changes of the node list to agents."""
    while True:
        await asyncio.sleep(interval)
        try:
            await _announce(nodes, me, hub)
        except Exception:  # Redis briefly away: agents keep the list they have
            log.warning("node announcement failed", exc_info=True)


async def _withdraw(nodes: NodeRegistry, me: NodeInfo, announcer: asyncio.Task[None]) -> None:
    announcer.cancel()
    try:
        await nodes.withdraw(me.node)
    except Exception:  # Redis down: the node ages out of the registry on its own
        log.warning("could not withdraw node %s from the registry", me.node)


async def _sweep(registry: ExitRegistry, interval: float) -> None:
    """Remove exits of nodes that died without deregistering them."""
    while True:
        await asyncio.sleep(interval)
        try:
            removed = await registry.sweep()
        except Exception:  # Redis briefly away: try again next round
            log.warning("pool sweep failed", exc_info=True)
            continue
        if removed:
            log.info("removed %d stale exit(s) from the pool", removed)


async def run_gateway(settings: GatewaySettings, stop: asyncio.Event) -> None:
    """Run a node until ``stop`` is set."""
    async with running_gateway(settings):
        await stop.wait()
