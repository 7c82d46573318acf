"""The provider agent as a whole: a session to every live gateway node, kept logged in.

One session goes to the gateway address the agent was given (the entry point, possibly a load
balancer), and one to every other live node the nodes announce; each reconnects with jittered
backoff. They share one governor (``gateway.agent.governor``) and one usage-report outbox
(``gateway.agent.outbox``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import replace

from gateway.agent.connect import ProxyRefused
from gateway.agent.governor import Governor
from gateway.agent.outbox import UsageReports
from gateway.agent.resolver import Resolver
from gateway.agent.session import AgentSession, LoginRefused, NodesCallback
from gateway.agent.settings import AgentSettings
from gateway.conn import ConnectionClosed
from gateway.wire import WireError
from gateway.wstunnel import HandshakeFailed

log = logging.getLogger("ipsx.agent")


async def _stay_logged_in(
    settings: AgentSettings,
    resolver: Resolver,
    stop: asyncio.Event,
    *,
    expect_node: str | None = None,
    on_nodes: NodesCallback | None = None,
    on_session: Callable[[AgentSession | None], None] = lambda session: None,
    reports: UsageReports | None = None,
    governor: Governor | None = None,
    wanted: Callable[[], bool] = lambda: True,
) -> None:
    """Keep one session to one gateway address until ``stop`` is set (or the task is cancelled),
    reconnecting with jittered backoff. ``on_session`` hears each login and each loss. Once
    ``wanted`` says no, a session still logged in serves on, but is not replaced when it ends."""
    backoff = settings.backoff_initial
    where = f"{settings.gateway_host}:{settings.gateway_port}"
    while not stop.is_set() and wanted():
        session = AgentSession(
            settings, resolver, expect_node=expect_node, on_nodes=on_nodes, reports=reports, governor=governor
        )
        serving = None
        try:
            await session.login()
            on_session(session)
            backoff = settings.backoff_initial
            serving = asyncio.create_task(session.serve())
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if serving.done():
                serving.result()
        except LoginRefused as refused:
            log.error("the gateway at %s refused this agent: %s", where, refused)
        except (ProxyRefused, HandshakeFailed) as exc:  # the proxy's or the gateway's answer says why
            log.warning("cannot reach the gateway at %s: %s; retrying", where, exc)
        except (OSError, ConnectionClosed, WireError, TimeoutError, ValueError) as exc:
            log.warning("connection to the gateway at %s lost (%s); reconnecting", where, type(exc).__name__)
        finally:
            if serving is not None and not serving.done():
                serving.cancel()
            if session.node is not None:
                on_session(None)
            await session.close()
        if stop.is_set() or not wanted():
            break
        delay = backoff * (0.5 + random.random())
        backoff = min(backoff * 2, settings.backoff_max)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


class _Fleet:
    """An agent's sessions: one to the gateway address it was given (the entry point, possibly a
    load balancer) and one to every other live gateway node that the nodes announce."""

    def __init__(self, settings: AgentSettings, stop: asyncio.Event, governor: Governor) -> None:
        self._settings = settings
        self._stop = stop
        self._governor = governor
        self._resolver = Resolver()
        self._entry_node: str | None = None  # the node the entry session is logged in to
        self._nodes: list[tuple[str, str, int]] = []
        self._direct: dict[str, tuple[tuple[str, int], asyncio.Task[None]]] = {}
        self._logged_in: set[str] = set()  # the nodes of _direct whose session is logged in
        self._reports = UsageReports()

    async def run(self) -> None:
        retrying = asyncio.create_task(self._reports.run(self._stop))
        governing = asyncio.create_task(self._governor.run(self._stop))
        try:
            await _stay_logged_in(
                self._settings,
                self._resolver,
                self._stop,
                on_nodes=self._heard,
                on_session=self._entry_changed,
                reports=self._reports,
                governor=self._governor,
            )
        finally:
            retrying.cancel()
            for _, task in self._direct.values():
                task.cancel()
            if self._direct:
                await asyncio.gather(*(task for _, task in self._direct.values()), return_exceptions=True)
            if self._stop.is_set():
                await governing  # its last save of the state file, once the sessions are gone
            else:
                governing.cancel()
                await asyncio.gather(governing, return_exceptions=True)

    def _entry_changed(self, session: AgentSession | None) -> None:
        self._entry_node = None if session is None else session.node
        self._reconcile()

    def _heard(self, session: AgentSession, nodes: list[tuple[str, str, int]]) -> None:
        self._nodes = nodes
        self._reconcile()

    def _reconcile(self) -> None:
        if self._stop.is_set():
            return
        wanted = {node: (host, port) for node, host, port in self._nodes if node != self._entry_node}
        for node, (where, task) in list(self._direct.items()):
            if not self._listed(node) and node in self._logged_in:
                # A node that left the list may be draining: the streams it opened still run,
                # and their usage reports must reach it. Its session ends when the node closes it.
                continue
            if wanted.get(node) != where:
                task.cancel()
                del self._direct[node]
                log.info("gateway node %s left; tunnel closed", node)
        for node, (host, port) in wanted.items():
            if node in self._direct:
                continue
            direct = replace(self._settings, gateway_host=host, gateway_port=port)
            task = asyncio.create_task(
                _stay_logged_in(
                    direct,
                    self._resolver,
                    self._stop,
                    expect_node=node,
                    on_nodes=self._heard,
                    on_session=functools.partial(self._direct_session, node),
                    reports=self._reports,
                    governor=self._governor,
                    wanted=functools.partial(self._listed, node),
                )
            )
            task.add_done_callback(functools.partial(self._ended, node))
            self._direct[node] = ((host, port), task)
            log.info("gateway node %s announced at %s:%d; opening a tunnel to it", node, host, port)

    def _listed(self, node: str) -> bool:
        return any(listed == node for listed, _, _ in self._nodes)

    def _direct_session(self, node: str, session: AgentSession | None) -> None:
        if session is None:
            self._logged_in.discard(node)
        else:
            self._logged_in.add(node)

    def _ended(self, node: str, task: asyncio.Task[None]) -> None:
        """A direct session's task ended: the node it served left and closed it (or the agent stops)."""
        if node in self._direct and self._direct[node][1] is task:
            del self._direct[node]
            log.info("gateway node %s left; tunnel closed", node)


async def run_agent(
    settings: AgentSettings, stop: asyncio.Event, *, governor: Governor | None = None
) -> None:
    """Serve every live gateway node until ``stop`` is set, reconnecting with jittered backoff.

    ``governor`` defaults to one with the settings' limits and state file.
    """
    if governor is None:
        governor = Governor(
            settings.limits,
            state_file=settings.state_file,
            address=settings.account.address,
            policy=settings.policy,
        )
    await _Fleet(settings, stop, governor).run()
