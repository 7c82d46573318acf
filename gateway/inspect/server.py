"""An inspecting worker: mitmproxy's proxy core, in-process, with this package's addons only.

No mitmproxy UI, script loader, flow store or CA directory: a :class:`mitmproxy.master.Master`
with the proxy server, the layer chooser, :class:`~gateway.inspect.addon.RequesterTls` and the
:class:`~gateway.inspect.addon.Inspector`. mitmproxy never dials an origin (connection strategy
"lazy", and the ``server_connect`` hook refuses): every request goes through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from mitmproxy.addons.next_layer import NextLayer
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.certs import CertStore
from mitmproxy.log import LegacyLogEvents
from mitmproxy.master import Master
from mitmproxy.options import Options

from billing import db
from billing.accounts import KeyCache
from gateway.inspect.addon import Inspector
from gateway.inspect.settings import InspectSettings
from ipsx.listen import ListenError
from pool.client import redis_from_url

log = logging.getLogger("ipsx.inspect")


def _options(settings: InspectSettings, confdir: str) -> dict[str, object]:
    return {
        "mode": [f"regular@{settings.host}:{settings.port}"],
        "connection_strategy": "lazy",  # never dial the origin for a CONNECT: the gateway does
        "upstream_cert": False,  # so the leaf names the SNI / CONNECT host, not a fetched cert's
        "http2": False,  # HTTP/1.1 both ways; one request at a time per client connection
        "body_size_limit": str(settings.max_request_body),  # answered 413 beyond
        "confdir": confdir,  # a private empty directory: nothing is read from or written to ~
    }


@contextlib.asynccontextmanager
async def running_inspector(settings: InspectSettings) -> AsyncIterator[int]:
    """Start an inspecting worker; yields the bound port. On exit it stops listening, gives open
    client connections ``drain_timeout`` to finish, cuts the rest and closes everything. Raises
    :class:`ipsx.listen.ListenError` (for ``--port``) when the port cannot be bound."""
    async with contextlib.AsyncExitStack() as stack:
        redis = redis_from_url(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        pg = await db.connect(settings.database_url, min_size=1, max_size=settings.db_pool)
        stack.push_async_callback(pg.close)
        confdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="ipsx-inspect-"))
        dhparams = CertStore.load_dhparam(Path(confdir) / "dhparam.pem")  # mitmproxy's default group

        inspector = Inspector(
            settings, keys=KeyCache(pg, ttl=settings.auth_cache_ttl), redis=redis, pg=pg, dhparams=dhparams
        )
        stack.callback(inspector.close)
        master = Master(Options())
        _drop_legacy_log_handler()
        proxyserver = Proxyserver()  # type: ignore[no-untyped-call]
        # mitmproxy's addon manager and option store are untyped
        master.addons.add(proxyserver, NextLayer(), inspector.tls, inspector)  # type: ignore[no-untyped-call]
        master.options.update(**_options(settings, confdir))  # type: ignore[no-untyped-call]
        # A bind that fails is told once, by the ListenError below: not by mitmproxy's ERROR too.
        mitmproxy_log = logging.getLogger("mitmproxy.addons.proxyserver")
        level = mitmproxy_log.level
        mitmproxy_log.setLevel(logging.CRITICAL)
        try:
            started = await proxyserver.setup_servers()
        finally:
            mitmproxy_log.setLevel(level)
        if not started:
            raise ListenError("--port", settings.host, settings.port, _start_error(proxyserver))
        stack.push_async_callback(master.done)
        stack.push_async_callback(_stop, proxyserver, settings.drain_timeout)
        await master.running()
        port = int(proxyserver.listen_addrs()[0][1])
        log.info(
            "inspecting port on %s:%d, through the gateway at %s:%d",
            settings.host,
            port,
            settings.gateway_host,
            settings.gateway_port,
        )
        yield port


def _start_error(proxyserver: Proxyserver) -> OSError:
    """Why mitmproxy's server did not start: the bind's error, which mitmproxy logs and keeps."""
    for server in proxyserver.servers:
        if isinstance(server.last_exception, OSError):
            return server.last_exception
    return OSError("mitmproxy did not start its server")


def _drop_legacy_log_handler() -> None:
    """Remove the root-logger handler mitmproxy's Master installs to turn every log record into a
    deprecated ``add_log`` hook: no addon here listens for it, and it formats records again after
    the process's own handlers (which may have rewritten their ``extra`` fields)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, LegacyLogEvents):
            root.removeHandler(handler)


async def _stop(proxyserver: Proxyserver, drain_timeout: float) -> None:
    """Stop listening; wait up to ``drain_timeout`` for client connections, then cut them."""
    await proxyserver.servers.update([])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_timeout
    # Polled: connections end inside mitmproxy, which offers no event for "the last one closed".
    while proxyserver.connections and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    handlers = [
        io.handler
        for connection_handler in list(proxyserver.connections.values())
        for io in connection_handler.transports.values()
        if io.handler is not None
    ]
    for handler in handlers:
        handler.cancel()
    if handlers:
        log.warning("cut %d inspected connection(s) still open after the drain", len(handlers))
        await asyncio.wait(handlers, timeout=drain_timeout)


async def run_inspector(settings: InspectSettings, stop: asyncio.Event) -> None:
    """Run an inspecting worker until ``stop`` is set."""
    async with running_inspector(settings):
        await stop.wait()
